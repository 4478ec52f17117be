"""Executor throughput: (a) a 300-node chain, uncached, POST → execution_success; (b) accepted
POST /prompt per second for a 50-node graph from 8 concurrent clients.

    python bench/executor.py [--runs 5] [--seconds 5]

The server runs in a subprocess (this file with ``--serve``) with only the essential plugins and
a trivial inline node pack, so the figures are the kernel's own overhead. For scale, the
reference server on the 2-core development machine: (a) ~3.0 s, (b) ~130 prompts/s.
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


def serve(port: int, base: str) -> None:
    from kernel import hookimpl
    from kernel.server import serve_forever
    from kernel.testing import build_kernel

    hookimpl(BenchPack.register_nodes)
    kernel = build_kernel(
        __import__("pathlib").Path(base), [("benchpack", BenchPack())], port=port, cache_none=True
    )
    asyncio.run(serve_forever(kernel))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(500):
            try:
                async with session.get(url + "/prompt") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise SystemExit("server did not start")


async def bench_chain(url: str, runs: int) -> list[float]:
    import aiohttp

    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        client_id = uuid.uuid4().hex
        ws = await session.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0, compress=COMPRESS)
        for run in range(runs):
            prompt = chain(CHAIN, run)
            started = time.perf_counter()
            async with session.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            while True:
                msg = await ws.receive_json(timeout=60)
                if msg["type"] == "execution_success" and msg["data"]["prompt_id"] == body["prompt_id"]:
                    break
                if msg["type"] == "execution_error":
                    raise SystemExit(f"chain failed: {msg['data']}")
            times.append(time.perf_counter() - started)
        await ws.close()
    return times


async def bench_posts(url: str, seconds: float) -> float:
    import aiohttp

    prompt = chain(GRAPH, 1)
    deadline = time.perf_counter() + seconds
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < deadline:
                async with session.post(url + "/prompt", json={"prompt": prompt}) as resp:
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
            [sys.executable, os.path.abspath(__file__), "--serve", str(port), "--base", base],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_up(url)
            times = await bench_chain(url, args.runs)
            print(
                f"(a) {CHAIN}-node chain, uncached, POST -> execution_success: "
                f"median {statistics.median(times):.3f} s, best {min(times):.3f} s over {len(times)} runs "
                f"({statistics.median(times) / CHAIN * 1000:.2f} ms/node; runs: {', '.join(f'{t:.3f}' for t in times)})"
            )
            rate = await bench_posts(url, args.seconds)
            print(f"(b) accepted POST /prompt, {GRAPH}-node graph, {CLIENTS} clients: {rate:.0f} prompts/s")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.base)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
