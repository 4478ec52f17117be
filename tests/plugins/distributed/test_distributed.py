"""An API server and worker processes on a real RabbitMQ (loopback), as deployed.

The API server runs in the test's loop (real HTTP + WebSocket); workers are ``comfykernel worker``
subprocesses, so one can be killed with SIGKILL mid-prompt. Each test uses its own queue prefix.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kernel import StartupError
from tests.plugins.distributed import distpack
from tests.plugins.distributed.helpers import (
    Worker,
    broker_extra,
    delete_topology,
    frames_of,
    new_prefix,
    read_frames,
    require_broker,
    run_log,
    start_workers,
    wait_for,
    work_prompt,
)

PACK = ("distpack", distpack)


@pytest.fixture
async def prefix() -> Any:
    # Request it before comfy_server and workers: it is torn down after them, once nothing
    # connected could declare the queues again.
    await require_broker()
    name = new_prefix()
    yield name
    await delete_topology(name)


@pytest.fixture
def workers() -> Any:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


async def api_server(comfy_server: Any, tmp_path: Path, prefix: str, **extra: Any) -> Any:
    return await comfy_server(
        plugins=["history", "distributed", PACK],
        base_directory=tmp_path / "api",
        extra=broker_extra(prefix, **extra),
    )


async def history(server: Any) -> dict[str, Any]:
    status, body = await server.json("GET", "/history?max_items=1000")
    assert status == 200
    return body


def done_tags(log: list[list[str]]) -> dict[str, list[str]]:
    """tag -> pids that finished it."""
    found: dict[str, list[str]] = {}
    for parts in log:
        if parts[0] == "done":
            found.setdefault(parts[1], []).append(parts[2])
    return found


async def test_twenty_prompts_two_workers_one_killed(
    prefix: str, comfy_server: Any, tmp_path: Path, workers: list[Worker]
) -> None:
    server = await api_server(comfy_server, tmp_path, prefix)
    workers += [Worker(tmp_path / "w1", prefix), Worker(tmp_path / "w2", prefix)]
    await start_workers(workers)
    client_id = uuid.uuid4().hex
    ws = await server.ws(client_id)
    frames: list[Any] = []
    reader = asyncio.create_task(read_frames(ws, frames))
    log_path = tmp_path / "runs.log"

    ids: dict[str, str] = {}
    for n in range(20):
        tag = f"p{n:02d}"
        status, body = await server.json(
            "POST",
            "/prompt",
            json={"prompt": work_prompt(tag, log_path, seconds=0.6), "client_id": client_id},
        )
        assert status == 200, body
        ids[tag] = body["prompt_id"]

    # Kill the first worker in the middle of a prompt, after it has finished at least one.
    victim = workers[0]

    def victim_mid_prompt() -> str | None:
        log = run_log(log_path)
        pid = str(victim.pid)
        if not any(p[0] == "done" and p[2] == pid for p in log):
            return None
        started = [p[1] for p in log if p[0] == "start" and p[2] == pid]
        finished = {p[1] for p in log if p[0] == "done" and p[2] == pid}
        open_tags = [t for t in started if t not in finished]
        return open_tags[-1] if open_tags else None

    cut_tag = await wait_for(victim_mid_prompt, 30, "the first worker to be mid-prompt", 0.01)
    victim.kill9()
    killed_at = time.monotonic()
    cut_id = ids[cut_tag]

    async def recorded(prompt_id: str) -> bool:
        return prompt_id in await history(server)

    await wait_for(lambda: recorded(cut_id), 10, "the killed worker's prompt to complete elsewhere")
    assert time.monotonic() - killed_at < 10
    await wait_for(lambda: history_complete(server, ids), 60, "all 20 prompts in history")

    entries = await history(server)
    assert set(entries) == set(ids.values())
    for tag, prompt_id in ids.items():
        entry = entries[prompt_id]
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["outputs"]["1"]["text"] == [tag]

    log = run_log(log_path)
    finished = done_tags(log)
    # Every prompt finished exactly once; the cut one started twice and finished on the survivor.
    assert sorted(finished) == sorted(ids) and all(len(p) == 1 for p in finished.values())
    starts = [p[1] for p in log if p[0] == "start"]
    assert starts.count(cut_tag) == 2
    survivor = str(workers[1].pid)
    assert finished[cut_tag] == [survivor]
    by_worker = {pid for pids in finished.values() for pid in pids}
    assert by_worker == {str(victim.pid), survivor}
    assert entries[cut_id]["outputs"]["1"]["pid"] == [int(survivor)]

    # Progress reached the client from whichever worker ran the prompt.
    await wait_for(lambda: all(frames_of(frames, "executed", pid) for pid in ids.values()), 10, "executed")
    for tag, prompt_id in ids.items():
        progress = frames_of(frames, "progress", prompt_id)
        assert progress and progress[-1]["value"] == progress[-1]["max"] == 4, tag
    victim_tags = [t for t, pids in finished.items() if pids == [str(victim.pid)]]
    assert victim_tags and frames_of(frames, "progress", ids[victim_tags[0]])

    # Every output file reached the API server's output directory and /view serves it, even
    # though both workers wrote the same file name.
    for tag, prompt_id in ids.items():
        image = entries[prompt_id]["outputs"]["1"]["images"][0]
        async with server.get(
            "/view", params={"filename": image["filename"], "subfolder": "dist", "type": "output"}
        ) as resp:
            assert resp.status == 200
            assert (await resp.text()).startswith(f"{tag} from ")
    status, queue = await server.json("GET", "/queue")
    assert queue == {"queue_running": [], "queue_pending": []}
    reader.cancel()
    await ws.close()


async def history_complete(server: Any, ids: dict[str, str]) -> bool:
    return set(ids.values()) <= set(await history(server))


async def test_interrupt_reaches_the_worker_running_that_prompt(
    prefix: str, comfy_server: Any, tmp_path: Path, workers: list[Worker]
) -> None:
    server = await api_server(comfy_server, tmp_path, prefix)
    workers += [Worker(tmp_path / "w1", prefix), Worker(tmp_path / "w2", prefix)]
    await start_workers(workers)
    log_path = tmp_path / "runs.log"
    ids = {}
    for tag in ("long1", "long2"):
        _, body = await server.json(
            "POST", "/prompt", json={"prompt": work_prompt(tag, log_path, seconds=30, steps=300)}
        )
        ids[tag] = body["prompt_id"]

    def both_running() -> bool:
        return {p[1] for p in run_log(log_path) if p[0] == "start"} == {"long1", "long2"}

    await wait_for(both_running, 20, "both prompts to run")
    status, queue = await server.json("GET", "/queue")
    assert sorted(item[1] for item in queue["queue_running"]) == sorted(ids.values())

    async with server.post("/interrupt", json={"prompt_id": ids["long1"]}) as resp:
        assert resp.status == 200
    started = time.monotonic()

    async def recorded(prompt_id: str) -> bool:
        return prompt_id in await history(server)

    await wait_for(lambda: recorded(ids["long1"]), 10, "the interrupted prompt to end")
    entry = (await history(server))[ids["long1"]]
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"
    assert time.monotonic() - started < 5
    # The other worker's prompt is untouched.
    await asyncio.sleep(0.5)
    assert ids["long2"] not in await history(server)
    status, queue = await server.json("GET", "/queue")
    assert [item[1] for item in queue["queue_running"]] == [ids["long2"]]

    async with server.post("/interrupt", json={"prompt_id": ids["long2"]}) as resp:
        assert resp.status == 200
    await wait_for(lambda: recorded(ids["long2"]), 10, "the second prompt to end")
    assert not any(p[0] == "done" for p in run_log(log_path))


async def test_deleted_pending_prompt_never_runs(
    prefix: str, comfy_server: Any, tmp_path: Path, workers: list[Worker]
) -> None:
    server = await api_server(comfy_server, tmp_path, prefix)
    log_path = tmp_path / "runs.log"
    ids = {}
    for tag in ("keep", "drop"):
        _, body = await server.json(
            "POST", "/prompt", json={"prompt": work_prompt(tag, log_path, seconds=0.1)}
        )
        ids[tag] = body["prompt_id"]
    status, queue = await server.json("GET", "/queue")
    assert sorted(item[1] for item in queue["queue_pending"]) == sorted(ids.values())
    async with server.post("/queue", json={"delete": [ids["drop"]]}) as resp:
        assert resp.status == 200
    workers.append(Worker(tmp_path / "w1", prefix))
    await start_workers(workers)

    async def kept() -> bool:
        return ids["keep"] in (await history(server))

    await wait_for(kept, 20, "the kept prompt to run")
    await asyncio.sleep(0.5)
    assert ids["drop"] not in await history(server)
    assert [p[1] for p in run_log(log_path) if p[0] == "start"] == ["keep"]
    status, queue = await server.json("GET", "/queue")
    assert queue == {"queue_running": [], "queue_pending": []}


async def test_a_prompt_that_kills_every_worker_fails_at_the_delivery_limit(
    prefix: str, comfy_server: Any, tmp_path: Path, workers: list[Worker]
) -> None:
    server = await api_server(comfy_server, tmp_path, prefix, delivery_limit=1)
    log_path = tmp_path / "runs.log"
    client_id = uuid.uuid4().hex
    ws = await server.ws(client_id)
    frames: list[Any] = []
    reader = asyncio.create_task(read_frames(ws, frames))
    prompt = {"1": {"class_type": "DistCrash", "inputs": {"log_path": str(log_path)}}}
    _, body = await server.json("POST", "/prompt", json={"prompt": prompt, "client_id": client_id})
    prompt_id = body["prompt_id"]

    async def failed() -> bool:
        return prompt_id in await history(server)

    for _ in range(4):  # a fresh worker each time: the prompt kills the one that runs it
        worker = Worker(tmp_path / "w", prefix, "--delivery-limit", "1")
        workers.append(worker)
        await start_workers([worker])
        await wait_for(lambda w=worker: w.proc.poll() is not None or failed(), 30, "a crash or the failure")
        if await failed():
            break
    entry = (await history(server))[prompt_id]
    assert entry["status"]["status_str"] == "error"
    error = entry["status"]["messages"][-1]
    assert error[0] == "execution_error"
    assert "delivery limit" in error[1]["exception_message"]
    crashes = [p for p in run_log(log_path) if p[0] == "crash"]
    assert len(crashes) == 2  # first delivery plus one redelivery (x-delivery-limit 1)
    await wait_for(
        lambda: frames_of(frames, "execution_error", prompt_id), 5, "execution_error on the socket"
    )
    reader.cancel()
    await ws.close()


async def test_unreachable_broker_is_a_clear_startup_error(comfy_server: Any, tmp_path: Path) -> None:
    with pytest.raises(
        StartupError, match="cannot reach the RabbitMQ broker at amqp://guest:\\*\\*\\*@127.0.0.1:1/"
    ):
        await comfy_server(plugins=["distributed"], extra={"broker": "amqp://guest:secret@127.0.0.1:1/"})


def test_without_a_broker_the_in_process_queue_stays(make_kernel: Any) -> None:
    from kernel.queue import PromptQueue

    kernel = make_kernel(plugins=["distributed"])
    assert type(kernel.queue) is PromptQueue


async def test_mismatched_queue_settings_are_a_clear_startup_error(
    prefix: str, comfy_server: Any, tmp_path: Path
) -> None:
    await api_server(comfy_server, tmp_path, prefix, delivery_limit=1)
    with pytest.raises(StartupError, match="same --delivery-limit"):
        await comfy_server(
            plugins=["distributed"], base_directory=tmp_path / "other", extra=broker_extra(prefix)
        )


async def test_a_prompt_accepted_just_before_shutdown_reaches_the_broker(
    prefix: str, comfy_server: Any, tmp_path: Path
) -> None:
    """Shutdown sends what the outbox still holds before closing the broker connection."""
    import aio_pika

    from kernel.queue import QueueItem
    from tests.plugins.distributed.helpers import BROKER_URL

    server = await api_server(comfy_server, tmp_path, prefix)
    prompt_id = str(uuid.uuid4())
    # Put and stop without yielding in between: the send loop has not run when shutdown begins.
    server.kernel.queue.put(
        QueueItem(number=0, prompt_id=prompt_id, prompt=work_prompt("late", tmp_path / "x"))
    )
    await server.stop()

    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{prefix}.prompts", ensure=True)
        message = await queue.get(fail=False, timeout=5)
        assert message is not None, "the prompt accepted before shutdown never reached the broker"
        assert message.message_id == prompt_id
        await message.reject(requeue=False)
