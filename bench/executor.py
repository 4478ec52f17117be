"""Executor throughput: (a) a 300-node chain, uncached, POST → execution_success; (b) accepted
POST /prompt per second for a 50-node graph from 8 concurrent clients.

    python bench/executor.py [--runs 5] [--seconds 5]
    python bench/executor.py --pack core [--chain 300,3000] [--event-loop asyncio]

The server runs in a subprocess (this file with ``--serve``). By default it has only the essential
plugins and a trivial inline node pack, so the figures are the kernel's own overhead. With
``--pack core`` every installed plugin is on (history, assets, core nodes...) and the chains are
EmptyImage → ImageInvert × N → PreviewImage at the default cache policy: the figures a user
sees. A WebSocket client is connected throughout (a) and its received bytes per node are printed,
which must stay flat as the chain grows. In (b) each prompt differs (a new seed/colour), so the
executor works through them while the POSTs arrive. For scale, the reference server on the 2-core
development machine: (a) ~3.0 s, (b) 55-470 prompts/s depending on what its executor does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

CHAIN = 300
GRAPH = 50
CLIENTS = 8
COMPRESS = int(os.environ.get("BENCH_WS_COMPRESS", "15"))


class Inc:
    CATEGORY = "bench"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": -(2**62), "max": 2**62})}}

    def run(self, value: int) -> tuple[int]:
        return (value + 1,)


class Sink:
    CATEGORY = "bench"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def run(self, value: int) -> dict[str, Any]:
        return {"ui": {"value": [value]}}


class BenchPack:
    __name__ = "benchpack"

    def register_nodes(self, register: Any) -> None:
        register("BenchInc", Inc)
        register("BenchSink", Sink)


def chain(length: int, seed: int) -> dict[str, Any]:
    prompt: dict[str, Any] = {"0": {"class_type": "BenchInc", "inputs": {"value": seed}}}
    for i in range(1, length - 1):
        prompt[str(i)] = {"class_type": "BenchInc", "inputs": {"value": [str(i - 1), 0]}}
    prompt[str(length - 1)] = {"class_type": "BenchSink", "inputs": {"value": [str(length - 2), 0]}}
    return prompt


def image_chain(length: int, seed: int) -> dict[str, Any]:
    """EmptyImage, ``length - 2`` ImageInvert nodes, PreviewImage; ``seed`` picks the colour."""
    prompt: dict[str, Any] = {
        "0": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 0xFFFFFF},
        }
    }
    for i in range(1, length - 1):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt[str(length - 1)] = {"class_type": "PreviewImage", "inputs": {"images": [str(length - 2), 0]}}
    return prompt


def serve(port: int, base: str, pack: str, loop: str) -> None:
    from pathlib import Path

    from kernel import event_loop, hookimpl
    from kernel.server import serve_forever
    from kernel.testing import build_kernel

    if pack == "core":
        kernel = build_kernel(Path(base), None, port=port)
    else:
        hookimpl(BenchPack.register_nodes)
        kernel = build_kernel(Path(base), [("benchpack", BenchPack())], port=port, cache_none=True)
    event_loop.run(serve_forever(kernel), loop)  # as the CLI runs it (--event-loop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(3000):
            try:
                async with session.get(url + "/prompt") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise SystemExit("server did not start")


async def bench_chain(url: str, runs: int, length: int, pack: str) -> tuple[list[float], float]:
    """Seconds per run and WebSocket bytes received per node (median run)."""
    import aiohttp

    times: list[float] = []
    per_node: list[float] = []
    make = image_chain if pack == "core" else chain
    async with aiohttp.ClientSession() as session:
        client_id = uuid.uuid4().hex
        ws = await session.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0, compress=COMPRESS)
        for run in range(runs):
            prompt = make(length, run + length * 1000 + int(time.time()))
            received = 0
            started = time.perf_counter()
            async with session.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            while True:
                raw = await ws.receive(timeout=120)
                if raw.type != aiohttp.WSMsgType.TEXT:
                    received += len(raw.data) if isinstance(raw.data, bytes) else 0
                    if raw.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        raise SystemExit("the server closed the WebSocket")
                    continue
                received += len(raw.data)
                msg = json.loads(raw.data)
                if msg["type"] == "execution_success" and msg["data"]["prompt_id"] == body["prompt_id"]:
                    break
                if msg["type"] == "execution_error":
                    raise SystemExit(f"chain failed: {msg['data']}")
            times.append(time.perf_counter() - started)
            per_node.append(received / length)
        await ws.close()
    return times, statistics.median(per_node)


async def bench_posts(url: str, seconds: float, pack: str) -> float:
    import aiohttp

    deadline = time.perf_counter() + seconds
    accepted = 0
    counter = iter(range(1, 1 << 40))
    # Bodies are spliced from one encoding so the load generator (on the same cores) stays cheap.
    marker = 987654321
    encoded = json.dumps({"prompt": image_chain(GRAPH, marker) if pack == "core" else chain(GRAPH, marker)})
    head, tail = encoded.split(str(marker % 0xFFFFFF if pack == "core" else marker), 1)
    headers = {"Content-Type": "application/json"}

    async def client() -> None:
        nonlocal accepted
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < deadline:
                body = f"{head}{next(counter) % 0xFFFFFF}{tail}"
                async with session.post(url + "/prompt", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        accepted += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    async with aiohttp.ClientSession() as session:
        await session.post(url + "/queue", json={"clear": True})
        await session.post(url + "/interrupt")
    return accepted / elapsed


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as base:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", str(port), "--base", base]
            + ["--pack", args.pack, "--event-loop", args.event_loop],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_up(url)
            from kernel.event_loop import loop_factory

            print(f"server event loop: {'asyncio' if loop_factory(args.event_loop) is None else 'uvloop'}")
            medians: dict[int, float] = {}
            for length in args.chain:
                times, per_node = await bench_chain(url, args.runs, length, args.pack)
                medians[length] = statistics.median(times)
                print(
                    f"(a) {length}-node chain ({args.pack} pack), uncached, WebSocket client connected, "
                    f"POST -> execution_success: median {medians[length]:.3f} s, best {min(times):.3f} s "
                    f"over {len(times)} runs ({medians[length] / length * 1000:.2f} ms/node; "
                    f"{per_node:.0f} WebSocket bytes/node; runs: {', '.join(f'{t:.3f}' for t in times)})"
                )
            if len(medians) > 1:
                small, large = min(medians), max(medians)
                print(
                    f"    {large}-node / {small}-node time: {medians[large] / medians[small]:.1f}x "
                    f"for {large / small:.0f}x the nodes"
                )
            rate = await bench_posts(url, args.seconds, args.pack)
            print(f"(b) accepted POST /prompt, {GRAPH}-node graph, {CLIENTS} clients: {rate:.0f} prompts/s")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--pack",
        choices=["bench", "core"],
        default="bench",
        help="bench: essentials + trivial nodes; core: all plugins",
    )
    parser.add_argument(
        "--chain",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[CHAIN],
        metavar="N[,N...]",
        help=f"chain lengths for (a) (default {CHAIN})",
    )
    parser.add_argument(
        "--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto", help="as comfykernel run's"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.base, args.pack, args.event_loop)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
