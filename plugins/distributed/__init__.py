"""Distributed execution on RabbitMQ: one API server, many ``comfykernel worker`` processes.

The API server's ``kernel.queue`` becomes a :class:`backend.BrokerQueue` that publishes prompts to
a durable quorum queue; workers claim, run and report back over a results queue; the API server
records every result (its SQLite history stays the record of truth) before the worker acks.
See ``docs/operations.md``, "Distributed deployment".
"""
