"""Soak: 10,000 quick prompts through a real server process while its RSS is sampled throughout.

    python bench/soak.py [--prompts 10000] [--history-max-items 1000]

Memory must plateau: history is capped (a small cap, so eviction starts early in the run),
the output cache is count-bounded (``--cache``; the default RAM-pressure cache keeps results
until free RAM runs low, so it grows by design), per-socket send queues are bounded, and a WebSocket client that never reads is
dropped rather than buffered. A few reading listeners and one that never reads stay connected
for the whole run. Prints the RSS curve (at every tenth of the run), the growth over the
second half, and whether the stalled socket was dropped; exits 1 when memory kept growing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import ServerProcess, prompt, start_listeners  # noqa: E402

MB = 1024 * 1024


async def stalled_socket(url: str, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake and then no reads at all (with a small receive buffer, like a slow link)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        (
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


def stalled_prompt(n: int) -> dict[str, Any]:
    text = f"{n:08d}" * 512  # 4 KiB, different per prompt so nothing is cached
    return {
        "1": {"class_type": "TestString", "inputs": {"text": text}},
        "2": {"class_type": "TestAnySink", "inputs": {"value": ["1", 0]}},
    }


async def was_closed_by_server(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """Read what the kernel buffered; EOF means the server closed the socket."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 20):
                pass
        return True
    except TimeoutError:
        return False


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="comfykernel-soak-"))
    server = ServerProcess(base, "--history-max-items", str(args.history_max_items), *args.cache.split())
    proc = psutil.Process(server.proc.pid)
    samples: list[tuple[int, float]] = []  # (prompts accepted so far, RSS bytes)
    accepted = 0
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        try:
            await server.wait_ready(session)
            listeners = await start_listeners(session, server.url, args.listeners)
            stalled_id = f"stalled-{uuid.uuid4().hex}"
            stalled_reader, stalled_writer = await stalled_socket(server.url, stalled_id)

            async def sampler() -> None:
                while True:
                    samples.append((accepted, proc.memory_info().rss))
                    await asyncio.sleep(args.sample_every)

            sampling = asyncio.create_task(sampler())
            started = time.perf_counter()
            next_id = iter(range(args.prompts))

            async def client() -> None:
                nonlocal accepted, errors
                for n in next_id:
                    # Every fifth prompt is the stalled tab's, so its execution messages pile up;
                    # they carry a 4 KiB text, so what piles up outgrows the OS socket buffers
                    # (up to 4 MiB on loopback) and reaches the kernel's bounded send queue.
                    if n % 5 == 0:
                        body = {"prompt": stalled_prompt(n), "client_id": stalled_id}
                    else:
                        body = {"prompt": prompt(n), "client_id": listeners[n % len(listeners)].client_id}
                    async with session.post(server.url + "/prompt", json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            accepted += 1
                        elif resp.status == 503:  # queue full: honour Retry-After (briefly)
                            await asyncio.sleep(0.5)
                        else:
                            errors += 1

            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            while True:
                async with session.get(server.url + "/prompt") as resp:
                    if (await resp.json())["exec_info"]["queue_remaining"] == 0:
                        break
                await asyncio.sleep(0.25)
            wall = time.perf_counter() - started
            await asyncio.sleep(args.sample_every * 2)  # a last sample or two at rest
            sampling.cancel()
            samples.append((accepted, proc.memory_info().rss))
            stalled_dropped = await was_closed_by_server(stalled_reader)
            stalled_writer.transport.abort()
            dropped_readers = sum(1 for listener in listeners if listener.task.done())
            for listener in listeners:
                listener.task.cancel()
        finally:
            server.stop()

    print(f"soak: {accepted}/{args.prompts} prompts accepted and executed in {wall:.1f} s, errors {errors}")
    print(
        f"history cap {args.history_max_items}; cache flags {args.cache!r}; "
        f"{args.listeners} reading listeners + 1 that never reads"
    )
    print("RSS curve (prompts accepted -> server RSS):")
    marks = []
    for tenth in range(11):
        goal = args.prompts * tenth // 10
        rss = next((r for done, r in samples if done >= goal), samples[-1][1])
        marks.append(rss)
        print(f"  {tenth * 10:>3}%  {goal:>6}  {rss / MB:8.1f} MB")
    peak = max(r for _, r in samples)
    half, end = marks[5], marks[10]
    growth = end - half
    print(f"peak {peak / MB:.1f} MB over {len(samples)} samples")
    print(f"second-half growth {growth / MB:+.1f} MB ({growth / half * 100:+.1f}% of the 50% mark)")
    plateau = growth <= max(args.tolerance_mb * MB, half * args.tolerance_pct / 100)
    print(f"memory plateau: {'yes' if plateau else 'NO'}")
    print(
        f"stalled WebSocket dropped: {'yes' if stalled_dropped else 'NO'}; reading listeners dropped {dropped_readers}"
    )
    return 0 if plateau and stalled_dropped and not errors and not dropped_readers else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--listeners", type=int, default=5)
    parser.add_argument("--history-max-items", type=int, default=1000)
    # The default server cache is the RAM-pressure one, which by design keeps every result until
    # free RAM runs low; a count-bounded cache shows whether anything *else* grows.
    parser.add_argument("--cache", default="--cache-lru 500", help="server cache flags, e.g. '--cache-ram'")
    parser.add_argument("--sample-every", type=float, default=0.25, metavar="SECONDS")
    parser.add_argument("--tolerance-mb", type=float, default=8.0, help="allowed second-half growth")
    parser.add_argument("--tolerance-pct", type=float, default=5.0, help="... or this share of the RSS")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
