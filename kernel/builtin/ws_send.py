"""The send queue of one WebSocket: bounded in bytes, with replaceable state frames.

A client that cannot keep up must cost a bounded amount of memory: the queue counts the bytes
it holds (a frame count alone let a socket hold hundreds of MB of big ``progress_state`` frames)
and refuses a frame past either limit, and the hub then drops the client.

A :class:`LatestFrame` carries state whose newest version supersedes the older ones (the
``progress_state`` of a prompt): while one with the same key still waits in the queue, a newer
one takes its place instead of queueing behind it, so a slow reader gets fewer frames rather
than a longer backlog and never an outdated state after a newer one. A :class:`SealingFrame`
(``executed``, a prompt's final message) fixes what is queued before it: a state queued later
goes behind it, so a client always reads the state that was current when the sealing message
was sent, before that message.
"""

from __future__ import annotations

import asyncio
from collections import deque

# Bytes a socket may have waiting before it is dropped. Enough for bursts of big previews and
# state frames of huge prompts; a reader that falls this far behind is not coming back.
SEND_QUEUE_BYTES = 32 * 1024 * 1024


class LatestFrame(str):
    """A text frame that replaces a queued, unsent frame with the same ``key``."""

    key: str
    version: int

    def __new__(cls, text: str, key: str, version: int) -> LatestFrame:
        frame = super().__new__(cls, text)
        frame.key = key
        frame.version = version
        return frame


class SealingFrame(str):
    """A text frame that no later LatestFrame may overtake by replacing one queued before it."""


class _Slot:
    """A queued LatestFrame; ``frame`` is swapped for newer versions until it is sent."""

    __slots__ = ("frame",)

    def __init__(self, frame: LatestFrame) -> None:
        self.frame = frame


Frame = str | bytes


class SendQueue:
    """FIFO of frames for one socket; ``put`` answers False when a limit would be crossed."""

    def __init__(self, max_frames: int, max_bytes: int = SEND_QUEUE_BYTES) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Frame | _Slot | None] = deque()
        self._slots: dict[str, _Slot] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame) -> bool:
        if isinstance(frame, LatestFrame):
            slot = self._slots.get(frame.key)
            if slot is not None:
                if frame.version > slot.frame.version:
                    self.bytes += len(frame) - len(slot.frame)
                    slot.frame = frame
                return self.bytes <= self.max_bytes
            if not self._fits(frame):
                return False
            slot = self._slots[frame.key] = _Slot(frame)
            self._append(slot, len(frame))
            return True
        if not self._fits(frame):
            return False
        if isinstance(frame, SealingFrame):
            self._slots.clear()
        self._append(frame, len(frame))
        return True

    def close(self) -> None:
        """End the drain after what is queued (a ``None`` marker, outside the limits)."""
        self._items.append(None)
        self._ready.set()

    def _fits(self, frame: Frame) -> bool:
        return len(self) < self.max_frames and self.bytes + len(frame) <= self.max_bytes

    def _append(self, item: Frame | _Slot, size: int) -> None:
        self._items.append(item)
        self.bytes += size
        self._ready.set()

    async def get(self) -> Frame | None:
        """The next frame, waiting for one; None once closed."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is None:
            return None
        if isinstance(item, _Slot):
            frame: Frame = item.frame
            if self._slots.get(item.frame.key) is item:
                del self._slots[item.frame.key]
        else:
            frame = item
        self.bytes -= len(frame)
        return frame
