"""Throughput of a CPU-bound graph on 1 and 2 RabbitMQ workers behind one API server.

    python bench/distributed.py [--broker amqp://guest:guest@127.0.0.1/] [--prompts 40] [--n 400000]

Starts the API server in this process (history + distributed plugins) and ``comfykernel worker``
subprocesses with the test pack's ``DistBurn`` node (a pure-Python loop, so each worker keeps one
core busy), submits the prompts, and times until every one is in the history. Prints prompts/s per
worker count and the speed-up. Needs a running RabbitMQ (see .ci/run) and at least 2 free cores
for a meaningful 2-worker figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.server import start_server  # noqa: E402
from kernel.testing import ServerClient, build_kernel  # noqa: E402
from tests.plugins.distributed import distpack  # noqa: E402
from tests.plugins.distributed.helpers import Worker, delete_topology, start_workers  # noqa: E402


async def measure(broker: str, workers: int, prompts: int, n: int, root: Path) -> float:
    import aiohttp

    prefix = f"bench{uuid.uuid4().hex[:10]}"
    kernel = build_kernel(
        root / f"api{workers}",
        ["history", "distributed", ("distpack", distpack)],
        extra={"broker": broker, "broker_prefix": prefix},
    )
    server = ServerClient(await start_server(kernel, port=0), aiohttp.ClientSession())
    procs = [Worker(root / f"w{workers}-{i}", prefix) for i in range(workers)]
    try:
        await start_workers(procs)
        # Warm-up: one prompt per worker, so imports and first calls are not timed.
        await run_batch(server, workers, n, seed0=10**6)
        started = time.perf_counter()
        await run_batch(server, prompts, n, seed0=0)
        return prompts / (time.perf_counter() - started)
    finally:
        for proc in procs:
            proc.stop()
        await server.stop()
        await delete_topology(prefix)


async def run_batch(server: ServerClient, count: int, n: int, seed0: int) -> None:
    ids = set()
    for i in range(count):
        prompt = {"1": {"class_type": "DistBurn", "inputs": {"n": n, "seed": seed0 + i}}}
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
        assert status == 200, body
        ids.add(body["prompt_id"])
    while True:
        status, history = await server.json("GET", "/history?max_items=100000")
        if ids <= set(history):
            return
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--n", type=int, default=400_000, help="loop iterations per prompt")
    args = parser.parse_args()
    import tests.plugins.distributed.helpers as helpers

    helpers.BROKER_URL = args.broker
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for count in (1, 2):
            rates[count] = await measure(args.broker, count, args.prompts, args.n, Path(tmp))
            print(f"{count} worker(s): {rates[count]:.2f} prompts/s ({args.prompts} prompts, n={args.n})")
        print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
