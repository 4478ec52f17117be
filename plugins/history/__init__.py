"""The history plugin: ``/history*`` and ``/api/jobs*``, backed by a SQLite record of every prompt.

Every accepted prompt is written down before ``POST /prompt`` answers; its row moves from
pending to running to finished as the lifecycle events arrive on the kernel's bus. At startup
the record is read back so that pending prompts run again and interrupted ones are retried
(``recovery.py``). Without this plugin the server still runs, with an in-memory queue only.
"""
