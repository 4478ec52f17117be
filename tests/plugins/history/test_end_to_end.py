"""History and jobs fed by the real POST /prompt and the real executor (in-process server)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from plugins.history.store import DB_NAME
from tests.plugins.history import slowpack

PLUGINS = ["history", ("slowpack", slowpack)]


def graph(tag: str, seconds: float = 0.05) -> dict:
    return {"1": {"class_type": "HistorySlow", "inputs": {"tag": tag, "seconds": seconds, "log_path": ""}}}


async def post_prompt(server, tag: str, seconds: float = 0.05, headers=None, **body) -> str:
    status, answer = await server.json(
        "POST", "/prompt", json={"prompt": graph(tag, seconds), **body}, headers=headers
    )
    assert status == 200, answer
    return answer["prompt_id"]


async def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_acceptance_is_on_disk_before_post_prompt_answers(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    prompt_id = await post_prompt(server, "durable", seconds=0.5)
    conn = sqlite3.connect(server.kernel.settings.user_path / DB_NAME)
    try:
        row = conn.execute("SELECT state, item FROM prompts WHERE prompt_id = ?", [prompt_id]).fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] in ("pending", "running")
    assert json.loads(row[1])[1] == prompt_id


async def test_history_is_written_before_the_final_executing_message(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    ws = await server.ws("client-h")
    prompt_id = await post_prompt(server, "tagged", client_id="client-h")
    while True:
        msg = json.loads((await ws.receive(timeout=20)).data)
        if msg["type"] == "executing" and msg["data"]["node"] is None:
            break
    _, body = await server.json("GET", f"/history/{prompt_id}")
    entry = body[prompt_id]
    assert entry["outputs"] == {"1": {"text": ["tagged"]}}
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][3]["client_id"] == "client-h"
    names = [m[0] for m in entry["status"]["messages"]]
    assert names[0] == "execution_start" and names[-1] == "execution_success"
    _, job = await server.json("GET", f"/api/jobs/{prompt_id}")
    assert job["status"] == "completed"
    assert job["preview_output"] == {"content": "tagged", "nodeId": "1", "mediaType": "text"}
    assert job["execution_end_time"] >= job["execution_start_time"] > 0
    await ws.close()


async def test_running_and_pending_jobs_then_cancellation(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    running = await post_prompt(server, "long", seconds=5)
    pending = await post_prompt(server, "next")

    async def in_progress():
        _, body = await server.json("GET", "/api/jobs?status=in_progress")
        return [j["id"] for j in body["jobs"]] == [running]

    await wait_for(in_progress)
    _, body = await server.json("GET", "/api/jobs?status=pending")
    assert [j["id"] for j in body["jobs"]] == [pending]
    assert await server.json("POST", f"/api/jobs/{pending}/cancel") == (200, {"cancelled": True})
    assert await server.json("POST", "/api/jobs/cancel", json={"job_ids": [running]}) == (
        200,
        {"cancelled": True},
    )

    async def cancelled():
        _, body = await server.json("GET", f"/api/jobs/{running}")
        return body if body.get("status") == "cancelled" else None

    job = await wait_for(cancelled)
    assert job["execution_status"]["status_str"] == "error"
    _, history = await server.json("GET", "/history")
    assert list(history) == [running]  # the dequeued prompt never ran and left no entry


async def test_multi_user_history_through_post_prompt(comfy_server):
    server = await comfy_server(plugins=PLUGINS, multi_user=True)
    alice = await post_prompt(server, "a", headers={"Comfy-User": "alice"})
    bob = await post_prompt(server, "b", headers={"Comfy-User": "bob"})

    async def both_done():
        _, a = await server.json("GET", "/history", headers={"Comfy-User": "alice"})
        _, b = await server.json("GET", "/history", headers={"Comfy-User": "bob"})
        return (a, b) if a and b else None

    a, b = await wait_for(both_done)
    assert list(a) == [alice] and list(b) == [bob]
    _, jobs = await server.json("GET", "/api/jobs", headers={"Comfy-User": "bob"})
    assert [j["id"] for j in jobs["jobs"]] == [bob]


async def test_graceful_restart_reruns_the_interrupted_prompt(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    long = await post_prompt(server, "long", seconds=3)
    queued = await post_prompt(server, "queued")

    async def started():
        _, body = await server.json("GET", f"/api/jobs/{long}")
        return body.get("status") == "in_progress"

    await wait_for(started)
    await server.server.stop()  # the executor interrupts the running prompt on the way down
    server = await comfy_server(plugins=PLUGINS)

    async def both_done():
        _, body = await server.json("GET", "/history")
        return body if len(body) == 2 else None

    history = await wait_for(both_done)
    assert list(history) == [long, queued]
    assert all(entry["status"]["status_str"] == "success" for entry in history.values())
