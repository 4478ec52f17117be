"""Latency of GET /history?max_items=50 and GET /api/jobs?limit=50 over 10,000 stored entries.

    python bench/history.py [--entries 10000] [--requests 200]

Fills the history plugin's SQLite record through the same bus events the engine publishes
(so the stored rows are what a real server writes), then times requests over real HTTP and
prints the database size.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.events import PromptFinished, PromptQueued, PromptStarted  # noqa: E402
from kernel.queue import QueueItem  # noqa: E402
from kernel.server import start_server  # noqa: E402
from kernel.testing import build_kernel  # noqa: E402
from plugins.history.store import DB_NAME  # noqa: E402

# A small txt2img-sized graph, so rows are as large as typical ones.
GRAPH = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 1,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat " * 4, "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def fill(kernel, entries: int) -> float:
    started = time.perf_counter()
    for n in range(entries):
        pid = str(uuid.uuid4())
        item = QueueItem(
            number=n,
            prompt_id=pid,
            prompt=GRAPH,
            extra_data={"create_time": 1_700_000_000_000 + n},
            outputs_to_execute=["9"],
        )
        kernel.bus.publish(PromptQueued(item=item))
        kernel.bus.publish(PromptStarted(prompt_id=pid))
        t = 1_700_000_000_000 + n
        messages = [
            ["execution_start", {"prompt_id": pid, "timestamp": t}],
            ["execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": t}],
            ["execution_success", {"prompt_id": pid, "timestamp": t + 1500}],
        ]
        outputs = {"9": {"images": [{"filename": f"ComfyUI_{n:05}_.png", "subfolder": "", "type": "output"}]}}
        meta = {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
        kernel.bus.publish(
            PromptFinished(
                item=item,
                status={"status_str": "success", "completed": True, "messages": messages},
                outputs=outputs,
                meta=meta,
            )
        )
    return time.perf_counter() - started


async def timed(session: aiohttp.ClientSession, url: str, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        times.append((time.perf_counter() - t0) * 1000)
    return times


def report(label: str, times: list[float]) -> None:
    times.sort()
    p95 = times[int(len(times) * 0.95) - 1]
    print(
        f"{label:32s} median {statistics.median(times):6.2f} ms   p95 {p95:6.2f} ms   ({len(times)} requests)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kernel = build_kernel(Path(tmp), ["history"])
        server = await start_server(kernel, port=0)
        try:
            seconds = fill(kernel, args.entries)
            print(
                f"recorded {args.entries} prompts in {seconds:.2f} s ({seconds / args.entries * 1000:.3f} ms each)"
            )
            async with aiohttp.ClientSession() as session:
                await timed(session, server.url + "/history?max_items=50", 5)  # warm up
                report(
                    "GET /history?max_items=50",
                    await timed(session, server.url + "/history?max_items=50", args.requests),
                )
                report(
                    "GET /api/jobs?limit=50",
                    await timed(session, server.url + "/api/jobs?limit=50", args.requests),
                )
                report("GET /history (all entries)", await timed(session, server.url + "/history", 10))
            db = kernel.settings.user_path / DB_NAME
            size = sum(p.stat().st_size for p in db.parent.glob(DB_NAME + "*"))
            print(f"database size {size / 1024 / 1024:.2f} MiB (with WAL) for {args.entries} entries")
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
