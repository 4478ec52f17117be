"""``BrokerQueue``: the API server's ``kernel.queue`` when prompts run on RabbitMQ workers.

It keeps the API server's view (pending, running, finished) for ``/queue`` and ``/prompt``, hands
each ``put`` to the coordinator to publish, and judges the workers' claims: a prompt runs at most
once at a time and is recorded once, however often the broker delivers it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kernel.events import QueueChanged
from kernel.queue import QueueItem

if TYPE_CHECKING:
    from kernel import Kernel

# Finished prompt ids remembered to refuse late duplicates (history keeps the full record).
DONE_MEMORY = 100_000
RUN, SKIP = "run", "skip"


class BrokerQueue:
    """Implements ``kernel.queue.QueueBackend``; thread-safe."""

    def __init__(self, kernel: Kernel, publish: Callable[[QueueItem], None] | None = None) -> None:
        self.kernel = kernel
        # Set by the coordinator; items put before it exists are published when it starts.
        self.publish = publish
        self.unpublished: list[QueueItem] = []
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._counter = 0
        self.pending: dict[str, QueueItem] = {}
        self.running: dict[str, QueueItem] = {}
        self.attempts: dict[str, str] = {}
        self.done: OrderedDict[str, str] = OrderedDict()  # prompt id -> the attempt recorded
        self.removed: set[str] = set()

    # --- QueueBackend ---------------------------------------------------------------------

    def next_number(self, front: bool = False) -> int:
        with self._lock:
            n = self._counter
            self._counter += 1
        return -n if front else n

    def advance_counter(self, past: float) -> None:
        with self._lock:
            self._counter = max(self._counter, int(past) + 1)

    def put(self, item: QueueItem) -> None:
        with self._lock:
            self.pending[item.prompt_id] = item
            self.removed.discard(item.prompt_id)
            publish = self.publish
            if publish is None:
                self.unpublished.append(item)
        if publish is not None:
            publish(item)
        self._changed()

    def get(self, timeout: float | None = None) -> QueueItem | None:
        # Workers run the prompts; the API server's own executor thread just idles here.
        self._idle.wait(0.1 if timeout is None else timeout)
        return None

    def task_done(self, prompt_id: str) -> None:
        return None

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        with self._lock:
            pending = sorted(self.pending.values(), key=QueueItem.sort_key)
            return list(self.running.values()), pending

    def is_pending(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self.pending

    def is_running(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self.running

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        """Pending prompts stay in the broker; a worker claiming one is told to skip it."""
        with self._lock:
            removed = [pid for pid in dict.fromkeys(prompt_ids) if self.pending.pop(pid, None) is not None]
            self.removed.update(removed)
        if removed:
            self._changed()
        return removed

    def clear(self) -> list[str]:
        with self._lock:
            removed = list(self.pending)
        return self.delete(removed)

    def remaining(self) -> int:
        with self._lock:
            return len(self.pending) + len(self.running)

    # --- the workers' side (called by the coordinator on the loop thread) -------------------

    def claim(self, item: QueueItem, attempt: str, redelivered: bool) -> str:
        """Decide whether a worker may run this delivery of ``item``."""
        pid = item.prompt_id
        with self._lock:
            if pid in self.done or pid in self.removed:
                return SKIP
            current = self.attempts.get(pid)
            # A second copy while one runs is a duplicate publish; a redelivery means the broker
            # saw the previous worker go away, so the new attempt takes over.
            if pid in self.running and current != attempt and not redelivered:
                return SKIP
            known = self.pending.pop(pid, None) or self.running.get(pid)
            self.running[pid] = known or item
            self.attempts[pid] = attempt
        self._changed()
        return RUN

    def accepts(self, prompt_id: str, attempt: str) -> bool:
        """Events of an attempt count only while it is the prompt's current (or recorded) one."""
        with self._lock:
            if prompt_id in self.done:
                return self.done[prompt_id] == attempt
            current = self.attempts.get(prompt_id)
            if current is None and prompt_id not in self.removed:
                self.attempts[prompt_id] = attempt  # not claimed through us (an API restart)
                return True
            return current == attempt

    def finish(self, prompt_id: str, attempt: str) -> QueueItem | None:
        """The item to record as finished, or ``None`` when this result must be dropped."""
        if not self.accepts(prompt_id, attempt):
            return None
        with self._lock:
            if prompt_id in self.done:
                return None
            item = self.running.pop(prompt_id, None) or self.pending.pop(prompt_id, None)
            self._remember_done(prompt_id, attempt)
        self._changed()
        return item

    def fail(self, item: QueueItem) -> bool:
        """A dead-lettered prompt: True if it still has to be recorded as failed."""
        pid = item.prompt_id
        with self._lock:
            if pid in self.done or pid in self.removed:
                return False
            self.running.pop(pid, None)
            self.pending.pop(pid, None)
            self._remember_done(pid, "")
        self._changed()
        return True

    def _remember_done(self, prompt_id: str, attempt: str) -> None:
        self.attempts.pop(prompt_id, None)
        self.done[prompt_id] = attempt
        while len(self.done) > DONE_MEMORY:
            self.done.popitem(last=False)

    def _changed(self) -> None:
        self.kernel.bus.publish_threadsafe(QueueChanged(queue_remaining=self.remaining()))
