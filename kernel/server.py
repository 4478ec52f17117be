"""Start and stop the HTTP server of a Kernel (used by the CLI and by ``kernel.testing``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass

from aiohttp import web

from kernel.app import Kernel, build_app

log = logging.getLogger("comfykernel")


@dataclass
class RunningServer:
    kernel: Kernel
    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(kernel: Kernel, port: int | None = None) -> RunningServer:
    """Build the app, run startup hooks and listen on every ``--listen`` address.

    ``port=0`` picks a free port (tests); the bound port is reported back.
    """
    app = build_app(kernel)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    bound_port = kernel.settings.port if port is None else port
    first_host = kernel.settings.listen[0]
    try:
        for i, host in enumerate(kernel.settings.listen):
            site = web.TCPSite(runner, host, bound_port, reuse_address=True)
            await site.start()
            if i == 0 and bound_port == 0:
                server = site._server
                assert server is not None
                sockets: list[socket.socket] = list(server.sockets)  # type: ignore[attr-defined]
                bound_port = sockets[0].getsockname()[1]
    except OSError:
        await runner.cleanup()
        raise
    return RunningServer(kernel, app, runner, first_host, bound_port)


async def serve_forever(kernel: Kernel) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    try:
        server = await start_server(kernel)
    except OSError as exc:
        log.error("cannot listen on %s port %s: %s", kernel.settings.listen, kernel.settings.port, exc)
        return 1
    log.info("comfykernel serving at %s (plugins: %s)", server.url, ", ".join(kernel.plugin_names))
    print(f"To see the GUI go to: {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0
