"""Start and stop the HTTP server of a Kernel (used by the CLI and by ``kernel.testing``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from aiohttp import web

from kernel import event_loop
from kernel.app import Kernel, build_app

log = logging.getLogger("comfykernel")

# How long a signalled server takes at most to stop before the process leaves anyway. The parts
# are bounded on their own (WebSocket closes, in-flight requests, the executor's wind-down);
# this is the backstop that keeps the promise of stopping within 5 s.
SHUTDOWN_SECONDS = 4.0
# In-flight HTTP requests get this long to finish once the listeners are closed.
REQUEST_DRAIN_SECONDS = 1.5
# The garbage collector's generation thresholds in a serving process (CPython's are 700, 10, 10).
# Each prompt POST /prompt accepts lives on in the queue: ~150 containers for a 50-node graph,
# several times that with the web UI's workflow attached. With the young generation collected
# every 700 allocations, a burst of POSTs had the collector walk each of them again and again;
# at 10,000 the accepted POST /prompt per second with the executor busy went from ~1,250 to
# ~1,480 (bench/executor.py --pack core (b), 2-core machine). The older generations keep their
# ratios, and the model manager still collects at once when it lets a model go.
SERVER_GC_THRESHOLDS = (10_000, 10, 10)


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
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=REQUEST_DRAIN_SECONDS, access_log=None)
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
    """Serve until SIGINT/SIGTERM; returns the process exit code.

    The first signal stops the server (the running prompt is interrupted, sockets are closed)
    within ``SHUTDOWN_SECONDS``; a second one ends the process at once.
    """
    try:
        server = await start_server(kernel)
    except OSError as exc:
        log.error("cannot listen on %s port %s: %s", kernel.settings.listen, kernel.settings.port, exc)
        return 1
    if kernel.executor is not None:
        kernel.executor.settle_heap_after_first_prompt = True
    gc.set_threshold(*SERVER_GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    log.info(
        "comfykernel serving at %s on %s (plugins: %s)",
        server.url,
        event_loop.loop_name(loop),
        ", ".join(kernel.plugin_names),
    )
    print(f"To see the GUI go to: {server.url}", flush=True)
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: exiting now", sig.name)
            exit_now(0)
        log.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    await stop.wait()
    try:
        await asyncio.wait_for(server.stop(), SHUTDOWN_SECONDS)
    except TimeoutError:
        log.warning("shutdown did not finish within %.0f s; exiting anyway", SHUTDOWN_SECONDS)
    return 0


def exit_now(code: int) -> None:
    """Leave the process without waiting for threads or running interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_until_signalled(kernel: Kernel) -> int:
    """The CLI's server process: serve, stop on a signal, and exit without hanging or aborting.

    A node can be inside a call that never checks for interruption (a long torch kernel); its
    thread cannot be stopped, and an interpreter teardown with it still running can abort
    (native thread pools destroyed under it). So when the executor thread is still busy after
    the shutdown, the process leaves through ``os._exit`` once everything was recorded.
    """
    started = time.monotonic()
    code = event_loop.run(serve_forever(kernel), kernel.settings.event_loop)
    executor_busy = kernel.executor is not None and kernel.executor.thread_alive()
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if executor_busy or busy:
        log.info("leaving with worker threads still running (%.1f s after start)", time.monotonic() - started)
        exit_now(code)
    return code
