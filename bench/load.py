"""Accept latency of POST /prompt under load: 50 clients x 40 prompts while 200 WebSockets listen.

    python bench/load.py [--clients 50] [--requests 40] [--listeners 200]

The server is a real ``comfykernel run`` process (history plugin plus the test node pack), so
the load generator does not share its event loop. Each prompt is one quick output node sent
with a listener's client_id, so the listeners receive the execution messages as well as the
queue status broadcasts. Prints p50 / p99 accept latency, the error count and how many
listeners were dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
NODE_PACK = "benchpack=tests.nodepack.basic"


def prompt(value: int) -> dict[str, Any]:
    return {"1": {"class_type": "TestSink", "inputs": {"value": value}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``comfykernel run`` in a child process, on a free port, under a fresh base directory."""

    def __init__(self, base: Path, *args: str, plugins: str = "history") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(REPO), COMFYKERNEL_EXTRA_PLUGINS=NODE_PACK)
        env.pop("COMFYKERNEL_PLUGINS", None)
        self.log_path = base / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernel.cli", "run", "--port", str(self.port)]
                + ["--base-directory", str(base), "--plugins", f"{plugins},benchpack", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {self.log_path}")
            try:
                async with session.get(self.url + "/system_stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Listener:
    """One WebSocket client that reads everything it is sent."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.frames = 0
        self.closed_early = False
        self.task: asyncio.Task[None] | None = None

    async def run(self, session: aiohttp.ClientSession, url: str, ready: asyncio.Event) -> None:
        async with session.ws_connect(f"{url}/ws?clientId={self.client_id}", max_msg_size=0) as ws:
            await ws.receive(timeout=30)  # the first status frame
            ready.set()
            async for _msg in ws:
                self.frames += 1
            self.closed_early = True


async def start_listeners(session: aiohttp.ClientSession, url: str, count: int) -> list[Listener]:
    """``count`` connected listeners, each past its first status frame (at most 60 s for all)."""
    listeners = [Listener(uuid.uuid4().hex) for _ in range(count)]
    readies = []
    for listener in listeners:
        ready = asyncio.Event()
        readies.append(ready)
        listener.task = asyncio.create_task(listener.run(session, url, ready))
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    return listeners


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="comfykernel-load-"))
    server = ServerProcess(base)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await server.wait_ready(session)
            listeners = await start_listeners(session, server.url, args.listeners)

            latencies: list[float] = []
            errors: list[str] = []

            async def client(n: int) -> None:
                for i in range(args.requests):
                    body = {
                        "prompt": prompt(n * 1000 + i),
                        "client_id": listeners[(n + i) % len(listeners)].client_id,
                    }
                    started = time.perf_counter()
                    try:
                        async with session.post(server.url + "/prompt", json=body) as resp:
                            await resp.read()
                            if resp.status != 200:
                                errors.append(f"HTTP {resp.status}")
                                continue
                    except aiohttp.ClientError as exc:
                        errors.append(type(exc).__name__)
                        continue
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client(n) for n in range(args.clients)))
            wall = time.perf_counter() - started

            # Let the executor finish so the listeners see the whole stream, then count.
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                async with session.get(server.url + "/prompt") as resp:
                    if (await resp.json())["exec_info"]["queue_remaining"] == 0:
                        break
                await asyncio.sleep(0.25)
            drain = time.perf_counter() - started
            await asyncio.sleep(0.5)
            dropped = sum(1 for listener in listeners if listener.closed_early or listener.task.done())
            frames = sum(listener.frames for listener in listeners)
            for listener in listeners:
                listener.task.cancel()
        finally:
            server.stop()

    total = args.clients * args.requests
    print(
        f"POST /prompt: {args.clients} clients x {args.requests} requests, {args.listeners} WebSocket listeners"
    )
    if latencies:
        print(
            f"accept latency  p50 {percentile(latencies, 50) * 1000:.1f} ms  "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms  "
            f"mean {statistics.fmean(latencies) * 1000:.1f} ms  max {max(latencies) * 1000:.1f} ms"
        )
    print(f"accepted {len(latencies)}/{total} in {wall:.2f} s ({len(latencies) / wall:.0f} prompts/s)")
    print(f"errors {len(errors)}" + (f" ({', '.join(sorted(set(errors)))})" if errors else ""))
    print(
        f"all executed after {drain:.2f} s; WebSocket frames received {frames}; listeners dropped {dropped}"
    )
    return 1 if errors or dropped else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
