"""A real server on its own event-loop thread, for synchronous clients (schemathesis, requests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from kernel.app import Kernel
from kernel.server import RunningServer, start_server
from kernel.settings import Settings


class ThreadedServer:
    """A Kernel rooted at ``base``, served on a free loopback port from a background thread."""

    def __init__(
        self, base: Path, plugins: Any = None, inline: Sequence[tuple[str, object]] = (), **settings: Any
    ) -> None:
        """``plugins=None`` enables every installed plugin; ``inline`` adds (name, module) plugins."""
        settings.setdefault("listen", ["127.0.0.1"])
        data = {"base_directory": str(base), "plugins": plugins, **settings}
        self.kernel = Kernel(msgspec.convert(data, Settings), inline_plugins=inline)
        self.loop = asyncio.new_event_loop()
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> ThreadedServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_server(self.kernel, port=0), self.loop)
        self.server = future.result(timeout=60)
        return self

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
