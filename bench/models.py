"""Latency of GET /models/{folder} over 10,000 model files, cold (first listing) and warm (cached).

    python bench/models.py [--files 10000] [--dirs 100] [--warm 200]

The files are empty ``.safetensors`` spread over ``--dirs`` subfolders of ``models/checkpoints``
(plus 1 in 10 non-model files the listing must filter out). Cold = the first request after the
server starts, which walks the tree; "touched" = the first request after one subfolder changed,
which re-walks; warm = later requests, which stat each directory and reuse the listing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel.server import start_server  # noqa: E402
from kernel.testing import build_kernel  # noqa: E402


def make_files(root: Path, files: int, dirs: int) -> None:
    for d in range(dirs):
        (root / f"d{d:03}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"d{i % dirs:03}" / f"model_{i:05}.safetensors").touch()
        if i % 10 == 0:
            (root / f"d{i % dirs:03}" / f"notes_{i:05}.txt").touch()


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as resp:
        raw = await resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, len(json.loads(raw))


async def run(files: int, dirs: int, warm: int) -> None:
    with tempfile.TemporaryDirectory() as base:
        make_files(Path(base) / "models" / "checkpoints", files, dirs)
        server = await start_server(build_kernel(Path(base), ["models"], listen=["127.0.0.1"]), port=0)
        url = server.url + "/models/checkpoints"
        try:
            async with aiohttp.ClientSession() as session:
                cold_ms, count = await timed_get(session, url)
                assert count == files, f"listed {count} of {files}"
                warm_ms = [(await timed_get(session, url))[0] for _ in range(warm)]
                (Path(base) / "models" / "checkpoints" / "d000" / "new.safetensors").touch()
                touched_ms, count = await timed_get(session, url)
                assert count == files + 1
        finally:
            await server.stop()
    warm_ms.sort()
    print(f"GET /models/checkpoints over {files} files in {dirs} folders")
    print(f"  cold (first listing)      {cold_ms:8.1f} ms")
    print(f"  after a folder changed    {touched_ms:8.1f} ms")
    print(
        f"  warm x{warm:<5} median {statistics.median(warm_ms):6.2f} ms"
        f"  p95 {warm_ms[int(len(warm_ms) * 0.95) - 1]:6.2f} ms  min {warm_ms[0]:6.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--warm", type=int, default=200)
    args = ap.parse_args()
    asyncio.run(run(args.files, args.dirs, args.warm))


if __name__ == "__main__":
    main()
