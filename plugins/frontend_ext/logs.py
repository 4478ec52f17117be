"""The server log ring buffer behind ``/internal/logs*`` and the ``logs`` WebSocket stream.

A ``logging.Handler`` on the root logger, installed at startup and removed at shutdown, so each
server in a process (tests start many) owns its buffer and nothing outlives it.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
from collections.abc import Container
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kernel import StashKey
from kernel.builtin.ws import HUB
from kernel.events import ServerMessage

if TYPE_CHECKING:
    from kernel import Kernel

CAPACITY = 300
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def terminal_size() -> dict[str, int | None]:
    for stream in (sys.stderr, sys.stdout):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        return {"cols": size.columns, "rows": size.lines}
    return {"cols": None, "rows": None}


class LogBuffer(logging.Handler):
    """Keeps the last ``capacity`` formatted records and streams new ones to subscribed sockets."""

    def __init__(self, kernel: Kernel, capacity: int = CAPACITY) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(_FORMAT))
        self.kernel = kernel
        self.entries: collections.deque[dict[str, str]] = collections.deque(maxlen=capacity)
        self.subscribers: set[str] = set()
        self._entries_lock = threading.Lock()
        # Publishing to a socket may itself log (a dropped client, say); that record is buffered
        # but not streamed again, or one slow client could feed an endless loop.
        self._streaming = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        entry = {"t": datetime.fromtimestamp(record.created).isoformat(), "m": message}
        with self._entries_lock:
            self.entries.append(entry)
        if self.subscribers and not getattr(self._streaming, "active", False):
            self._streaming.active = True
            try:
                data = {"entries": [entry], "size": terminal_size()}
                connected = self._connected()
                for sid in list(self.subscribers):
                    if connected is not None and sid not in connected:
                        # No socket by that id (a made-up one, or a subscribe that raced the
                        # close): let it go, as the reference does at the next line.
                        self.subscribers.discard(sid)
                        continue
                    self.kernel.bus.publish_threadsafe(ServerMessage(type="logs", data=data, sid=sid))
            finally:
                self._streaming.active = False

    def _connected(self) -> Container[str] | None:
        hub = self.kernel.stash.get(HUB, None)
        return hub.clients if hub is not None else None

    def snapshot(self) -> list[dict[str, str]]:
        with self._entries_lock:
            return list(self.entries)

    def text(self) -> str:
        return "".join(entry["m"] for entry in self.snapshot())

    def raw(self) -> dict[str, Any]:
        return {"entries": self.snapshot(), "size": terminal_size()}

    def subscribe(self, client_id: str, enabled: bool) -> None:
        if enabled:
            self.subscribers.add(client_id)
        else:
            self.subscribers.discard(client_id)


LOG_BUFFER = StashKey[LogBuffer]()


def install(kernel: Kernel) -> None:
    logging.getLogger().addHandler(kernel.stash[LOG_BUFFER])


def uninstall(kernel: Kernel) -> None:
    logging.getLogger().removeHandler(kernel.stash[LOG_BUFFER])
