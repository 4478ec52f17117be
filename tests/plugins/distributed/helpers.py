"""Shared pieces of the distributed tests: the broker, worker processes, prompts, waiting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
BROKER_URL = os.environ.get("COMFYKERNEL_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
PACK_ENV = "distpack=tests.plugins.distributed.distpack"


async def require_broker() -> None:
    """Fail (never skip) with a clear message when RabbitMQ is not running; CI starts it."""
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(BROKER_URL), 10)
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {BROKER_URL} ({exc!r}): the distributed tests need a "
            "running broker; .ci/run installs and starts rabbitmq-server on loopback",
            pytrace=False,
        )
    await connection.close()


async def delete_topology(prefix: str) -> None:
    """Remove a test's queues and exchanges so tests leave nothing behind in the broker."""
    import aio_pika

    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        for name in ("prompts", "results", "dead"):
            channel = await connection.channel()
            try:
                await channel.queue_delete(f"{prefix}.{name}")
            except Exception:
                pass
        for name in ("dead", "control"):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(f"{prefix}.{name}")
            except Exception:
                pass


def new_prefix() -> str:
    return f"test{uuid.uuid4().hex[:12]}"


def broker_extra(prefix: str, **more: Any) -> dict[str, Any]:
    return {"broker": BROKER_URL, "broker_prefix": prefix, **more}


class Worker:
    """``comfykernel worker`` in a subprocess with the distributed test pack."""

    def __init__(self, base: Path, prefix: str, *extra_args: str) -> None:
        self.base = base
        self.prefix = prefix
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / f"worker-{time.monotonic_ns()}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Worker:
        self.base.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), COMFYKERNEL_EXTRA_PLUGINS=PACK_ENV)
        env.pop("COMFYKERNEL_PLUGINS", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kernel.cli",
                    "worker",
                    "--broker",
                    BROKER_URL,
                    "--broker-prefix",
                    self.prefix,
                    "--base-directory",
                    str(self.base),
                    "--plugins",
                    "distributed,distpack",
                    *self.extra_args,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def ready(self) -> bool:
        return "comfykernel worker ready" in self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


async def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def start_workers(workers: list[Worker], timeout: float = 60) -> None:
    for worker in workers:
        worker.start()
    for worker in workers:
        await wait_for(
            lambda w=worker: w.ready() or w.proc.poll() is not None, timeout, "a worker to start", 0.1
        )
        assert worker.ready(), f"worker did not start:\n{worker.output()}"


def work_prompt(tag: str, log_path: Path, seconds: float = 0.5, steps: int = 4) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "DistWork",
            "inputs": {"tag": tag, "seconds": seconds, "steps": steps, "log_path": str(log_path)},
        }
    }


def run_log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def frames_of(frames: list[Any], kind: str, prompt_id: str) -> list[dict[str, Any]]:
    return [
        f["data"]
        for f in frames
        if isinstance(f, dict)
        and f.get("type") == kind
        and (f.get("data") or {}).get("prompt_id") == prompt_id
    ]


async def read_frames(ws: Any, into: list[Any]) -> None:
    """Background reader: every text frame parsed, binary frames as bytes."""
    async for msg in ws:
        into.append(json.loads(msg.data) if isinstance(msg.data, str) else msg.data)
