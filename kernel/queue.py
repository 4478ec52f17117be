"""The prompt queue: a thread-safe min-heap on ``(number, prompt_id)``, behind a backend seam.

The HTTP side puts, lists and deletes; the executor thread takes the next item and marks it
done. ``QueueBackend`` is the seam a broker-backed queue (the distributed plugin) implements.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec


class QueueItem(msgspec.Struct, kw_only=True):
    number: float | int
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = msgspec.field(default_factory=dict)
    outputs_to_execute: list[str] = msgspec.field(default_factory=list)
    # Secrets moved out of extra_data at submit time; never listed, never stored.
    sensitive: dict[str, Any] = msgspec.field(default_factory=dict)

    def as_list(self) -> list[Any]:
        """The reference's 5-element wire form (the sensitive slot stripped)."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def sort_key(self) -> tuple[float, str]:
        return (self.number, self.prompt_id)


class QueueBackend(Protocol):
    def next_number(self, front: bool = False) -> int: ...
    def put(self, item: QueueItem) -> None: ...
    def get(self, timeout: float | None = None) -> QueueItem | None: ...
    def task_done(self, prompt_id: str) -> None: ...
    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]: ...
    def is_pending(self, prompt_id: str) -> bool: ...
    def is_running(self, prompt_id: str) -> bool: ...
    def delete(self, prompt_ids: Iterable[str]) -> list[str]: ...
    def clear(self) -> list[str]: ...
    def remaining(self) -> int: ...


class PromptQueue:
    """In-process queue. ``on_change`` runs (from whichever thread changed it) after every change."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._heap: list[tuple[float, str, QueueItem]] = []
        # The ids in the heap: POST /prompt asks is_pending for every prompt, and a scan of a
        # queue thousands long made accepting a prompt cost O(queue length).
        self._pending_ids: set[str] = set()
        self._running: dict[str, QueueItem] = {}
        self._cond = threading.Condition()
        self._counter = 0
        self.on_change = on_change

    def next_number(self, front: bool = False) -> int:
        """The server counter: ``-counter`` for front submissions, then increments."""
        with self._cond:
            n = self._counter
            self._counter += 1
        return -n if front else n

    def advance_counter(self, past: float) -> None:
        """Make the next counter value exceed ``past`` (restart recovery keeps the order)."""
        with self._cond:
            self._counter = max(self._counter, int(past) + 1)

    def put(self, item: QueueItem) -> None:
        with self._cond:
            heapq.heappush(self._heap, (item.number, item.prompt_id, item))
            self._pending_ids.add(item.prompt_id)
            self._cond.notify()
        self._changed()

    def put_many(self, items: list[QueueItem]) -> None:
        """``put`` each of ``items`` with one wake-up and one change notice for the lot (a group
        of accepted prompts: one queue-status update instead of one per prompt)."""
        if not items:
            return
        if type(self).put is not PromptQueue.put:  # a subclass's put sees every item
            for item in items:
                self.put(item)
            return
        with self._cond:
            for item in items:
                heapq.heappush(self._heap, (item.number, item.prompt_id, item))
                self._pending_ids.add(item.prompt_id)
            self._cond.notify()
        self._changed()

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """Block until an item is pending (or ``timeout`` passes); it becomes running."""
        with self._cond:
            if not self._heap and not self._cond.wait_for(lambda: bool(self._heap), timeout):
                return None
            _, _, item = heapq.heappop(self._heap)
            self._pending_ids.discard(item.prompt_id)
            self._running[item.prompt_id] = item
        self._changed()
        return item

    def task_done(self, prompt_id: str) -> None:
        with self._cond:
            self._running.pop(prompt_id, None)
        self._changed()

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending); pending in heap-array order, as the reference lists it."""
        with self._cond:
            return list(self._running.values()), [entry[2] for entry in self._heap]

    def is_pending(self, prompt_id: str) -> bool:
        with self._cond:
            return prompt_id in self._pending_ids

    def is_running(self, prompt_id: str) -> bool:
        with self._cond:
            return prompt_id in self._running

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        """Remove pending items by id; returns the ids actually removed."""
        wanted = set(prompt_ids)
        with self._cond:
            removed = [e[1] for e in self._heap if e[1] in wanted]
            if removed:
                self._heap = [e for e in self._heap if e[1] not in wanted]
                heapq.heapify(self._heap)
                self._pending_ids.difference_update(removed)
        if removed:
            self._changed()
        return removed

    def clear(self) -> list[str]:
        with self._cond:
            removed = [e[1] for e in self._heap]
            self._heap = []
            self._pending_ids.clear()
        self._changed()
        return removed

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + len(self._running)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.remaining())
