"""A prompt that kills the server does not kill the prompts behind it, and an accepted prompt
survives kill -9 however fast prompts arrive (real server processes)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.kernel.process_helpers import ServerProcess, history_rows, wait_file_prompt


def test_prompt_that_kills_the_process_is_retried_once_behind_the_queue_then_failed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    kills = tmp_path / "kills.log"
    server = ServerProcess(tmp_path, "history").start()
    try:
        first = server.submit(wait_file_prompt(gate, "first"))
        killer = server.submit({"1": {"class_type": "HostileKillSelf", "inputs": {"log_path": str(kills)}}})
        behind = [server.submit(wait_file_prompt(gate, f"behind{n}")) for n in range(2)]
        gate.touch()
        assert server.wait_exit(60) == -signal.SIGKILL
        assert kills.read_text().splitlines() == ["kill"]

        # Restart: the prompts that were waiting run first, then the killer's one retry.
        server.start()
        assert server.wait_exit(60) == -signal.SIGKILL
        assert kills.read_text().splitlines() == ["kill", "kill"]
        rows = history_rows(tmp_path)
        assert {pid: rows[pid][0] for pid in (first, *behind)} == dict.fromkeys((first, *behind), "done")
        assert rows[killer] == ("running", 2)

        # The next start does not run it a third time: it is failed, saying why.
        server.start()
        history = server.history()
        assert list(history) == [first, *behind, killer]
        entry = history[killer]
        assert entry["status"]["status_str"] == "error"
        ((name, data),) = entry["status"]["messages"]
        assert name == "execution_error"
        assert "attempt 2 of 2" in data["exception_message"] and "process died" in data["exception_message"]
        assert all(history[pid]["status"]["status_str"] == "success" for pid in (first, *behind))
        assert kills.read_text().splitlines() == ["kill", "kill"]
        assert server.call("GET", "/queue")[1] == {"queue_running": [], "queue_pending": []}
    finally:
        server.kill()


def test_kill9_right_after_a_burst_of_200_accepted_prompts_loses_none(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "history").start()
    try:
        # The executor is held on a gate that never opens: the burst stays queued.
        blocker = server.submit(wait_file_prompt(tmp_path / "never", "blocker"))
        accepted = asyncio.run(_burst(server.url, 200, concurrency=16))
        assert len(accepted) == 200
        server.signal(signal.SIGKILL)
        server.wait_exit(20)
        rows = history_rows(tmp_path)
        assert set(accepted) <= set(rows)
        assert all(rows[pid][0] == "pending" for pid in accepted)
        # And they come back on the queue after a restart.
        server.start()
        _, queue = server.call("GET", "/queue")
        listed = {item[1] for item in queue["queue_pending"] + queue["queue_running"]}
        assert set(accepted) | {blocker} <= listed
    finally:
        server.kill()


async def _burst(url: str, count: int, concurrency: int) -> list[str]:
    """POST ``count`` small prompts over ``concurrency`` connections; the ids answered 200."""
    accepted: list[str] = []
    numbers = iter(range(count))

    async def client(session: aiohttp.ClientSession) -> None:
        for n in numbers:
            prompt: dict[str, Any] = {
                "img": {"class_type": "HostileImage", "inputs": {"size": 1, "seed": n}},
                "out": {"class_type": "HostileAlive", "inputs": {"image": ["img", 0]}},
            }
            async with session.post(url + "/prompt", json={"prompt": prompt}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                accepted.append(body["prompt_id"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return accepted
