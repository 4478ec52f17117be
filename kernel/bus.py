"""The event bus: ordered, synchronous fan-out on the event-loop thread.

Subscribers are plain callables run in publication order, so a WebSocket sees messages in the
order they were produced. Threads other than the loop's (the executor) publish with
``publish_threadsafe``, which hops onto the loop and keeps FIFO order.

Hand-offs from other threads are batched: events wait in one list and a single loop callback
delivers everything gathered so far. One ``call_soon_threadsafe`` per event let a busy executor
flood the loop's ready queue (tens of thousands of callbacks ahead of a signal handler or an HTTP
request). The first event after a quiet spell wakes the loop at once; while events keep coming,
the loop collects them every ``BATCH_SECONDS`` instead of being woken for each (a wake-up costs
the publisher a write to the loop's self-pipe). The list is bounded: a publisher that gets
``MAX_PENDING`` events ahead of the loop waits for it, so a stalled loop slows the executor down
instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("comfykernel.bus")

Subscriber = Callable[[Any], None]


class _Delivered:
    """A marker among the handed-over events: set once everything before it was published."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


# Events a foreign thread may have waiting for the loop before it blocks until they are delivered.
MAX_PENDING = 20_000
# How long a blocked publisher waits between checks that the loop is still there.
_WAIT_SLICE = 0.2
# While events keep arriving, the loop collects them this often instead of being woken per batch.
BATCH_SECONDS = 0.002


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Events from other threads not yet delivered, and whether a delivery callback is due.
        self._pending: list[Any] = []
        self._scheduled = False
        self._cond = threading.Condition()

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Attach the serving loop; before that (or after unbinding) publishing is direct."""
        with self._cond:
            self._loop = loop
            self._loop_thread = threading.get_ident() if loop is not None else None
            self._scheduled = False  # a delivery due on the old loop never comes

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

    def publish_threadsafe(self, event: Any, block: bool = True) -> None:
        """Deliver ``event`` from any thread, in order with other thread-safe publications.

        ``block=False`` never waits for the loop to catch up (for a caller holding a lock the
        loop may need); such events still count towards the bound of the others.
        """
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            if self._pending:
                self._publish_handed_over()  # earlier hand-offs first: FIFO across the two paths
            self.publish(event)
            return
        with self._cond:
            while block and len(self._pending) >= MAX_PENDING and self._loop is loop and not loop.is_closed():
                self._cond.wait(_WAIT_SLICE)
            self._pending.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # loop closed during shutdown: nobody is listening any more
            with self._cond:
                dropped, self._pending, self._scheduled = self._pending, [], False
                self._cond.notify_all()
            for item in dropped:
                if isinstance(item, _Delivered):
                    item.done.set()  # nobody will deliver it: do not keep its waiter waiting
            log.debug("dropped %d event(s) published after the loop closed", len(dropped))

    def publish_and_wait(self, event: Any, timeout: float | None = None) -> bool:
        """``publish_threadsafe``, then wait until the subscribers have had it.

        For lifecycle events whose record must exist before the publisher goes on (the history
        must know a prompt started before a node of it can crash the process). False when
        ``timeout`` passed first.
        """
        self.publish_threadsafe(event)
        if self._loop is None or threading.get_ident() == self._loop_thread:
            return True
        marker = _Delivered()
        self.publish_threadsafe(marker)
        return marker.done.wait(timeout)

    def _deliver(self) -> None:
        """The scheduled delivery on the loop: publish what was handed over, then poll again
        shortly if anything was (publishers append without waking the loop meanwhile); if nothing
        was, the next publication wakes the loop."""
        loop = self._loop
        with self._cond:
            batch, self._pending = self._pending, []
            self._scheduled = bool(batch) and loop is not None and not loop.is_closed()
            self._cond.notify_all()
        if self._scheduled:
            assert loop is not None
            loop.call_later(BATCH_SECONDS, self._deliver)
        self._publish_batch(batch)

    def _publish_handed_over(self) -> None:
        """Publish what was handed over, now (the scheduled delivery finds less to do)."""
        with self._cond:
            batch, self._pending = self._pending, []
            self._cond.notify_all()
        self._publish_batch(batch)

    def _publish_batch(self, batch: list[Any]) -> None:
        for event in batch:
            if isinstance(event, _Delivered):
                event.done.set()
            else:
                self.publish(event)
