"""The event bus: ordered, synchronous fan-out on the event-loop thread.

Subscribers are plain callables run in publication order, so a WebSocket sees messages in the
order they were produced. Threads other than the loop's (the executor) publish with
``publish_threadsafe``, which hops onto the loop and keeps FIFO order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("comfykernel.bus")

Subscriber = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Attach the serving loop; before that (or after unbinding) publishing is direct."""
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def publish(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber now (call from the loop thread)."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("bus subscriber %r failed on %s", callback, type(event).__name__)

    def publish_threadsafe(self, event: Any) -> None:
        """Deliver ``event`` from any thread, in order with other thread-safe publications."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self.publish(event)
            return
        try:
            loop.call_soon_threadsafe(self.publish, event)
        except RuntimeError:  # loop closed during shutdown: nobody is listening any more
            log.debug("dropped %s published after the loop closed", type(event).__name__)
