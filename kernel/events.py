"""Events published on the kernel's bus: small msgspec Structs, one per kind.

``ServerMessage`` is what the WebSocket plugin forwards to browsers; the others describe a
prompt's lifecycle for plugins that keep records (history, assets, the distributed backend).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Event(msgspec.Struct, kw_only=True):
    """Base class of every bus event."""


class ServerMessage(Event):
    """A message for WebSocket clients.

    ``data`` is a JSON-able dict for a text frame (sent as ``{"type", "data"}``) or ``bytes``
    for a binary frame (``type`` is then the event name and ``binary_type`` the 4-byte code).
    ``sid`` addresses one client; without it the message goes to every client when
    ``broadcast`` is true and to nobody otherwise (the reference's rule for prompts posted
    without a ``client_id``; record-keeping plugins still see it on the bus).
    """

    type: str
    data: Any
    sid: str | None = None
    broadcast: bool = False
    binary_type: int | None = None


class QueueChanged(Event):
    """The pending or running set changed; ``queue_remaining`` = pending + running."""

    queue_remaining: int


# --- a prompt's lifecycle (published by the prompt API and the executor) ------------------------
# The history plugin keeps its records from these; their order on the bus is the order below.


class PromptQueued(Event):
    """A prompt passed validation and was put on the queue.

    Published synchronously on the loop thread *before* ``POST /prompt`` answers, so a
    subscriber that writes it down makes the acceptance durable.
    """

    item: Any  # kernel.queue.QueueItem (typed Any to keep this module import-light)


class PromptsRemoved(Event):
    """Pending prompts left the queue without running (``POST /queue`` delete/clear, job cancel)."""

    prompt_ids: list[str]


class ClientDisconnected(Event):
    """The WebSocket of client ``sid`` closed (or was dropped), and no newer socket holds that id.

    Published on the event loop, so per-client state (log subscriptions, say) can be let go.
    """

    sid: str


class PromptStarted(Event):
    """The executor took the prompt off the queue and is about to run it (executor thread)."""

    prompt_id: str


class PromptFinished(Event):
    """The prompt ended: success, error or interruption (published from the executor thread).

    ``status`` is the reference's history status object ``{"status_str", "completed",
    "messages"}``; ``outputs`` maps node id → UI output; ``meta`` maps node id → display info.
    It is published before the final ``executing`` message with ``node: null``.
    """

    item: Any  # kernel.queue.QueueItem
    status: dict[str, Any]
    outputs: dict[str, Any]
    meta: dict[str, Any]
