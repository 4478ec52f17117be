"""Interrupts, lifecycle events for history, reconnect replay."""

from __future__ import annotations

import asyncio
import time

from kernel.events import PromptFinished, PromptStarted, ServerMessage
from tests.kernel.exec_helpers import EXEC_PACK, collect, connect, executed_ui, of_type, run, start, submit


def slow(steps: int = 100, delay: float = 0.05) -> dict:
    return {
        "s": {"class_type": "ExecSteps", "inputs": {"steps": steps, "delay": delay, "value": 1}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["s", 0]}},
    }


async def wait_for_executing(ws, node: str) -> None:
    while True:
        msg = await ws.receive_json(timeout=10)
        if msg["type"] == "executing" and msg["data"].get("node") == node:
            return


async def test_interrupt_running_prompt(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt_id = await submit(server, slow(), client_id)
    await wait_for_executing(ws, "s")
    started = time.monotonic()
    async with server.post("/interrupt") as resp:
        assert resp.status == 200
    messages = [m for m in await collect(ws, prompt_id) if isinstance(m, dict)]
    assert time.monotonic() - started < 2.0
    interrupted = of_type(messages, "execution_interrupted")
    assert len(interrupted) == 1
    data = interrupted[0]
    assert data["prompt_id"] == prompt_id and data["node_id"] == "s" and data["node_type"] == "ExecSteps"
    assert data["executed"] == [] and isinstance(data["timestamp"], int)
    assert not of_type(messages, "execution_success")


async def test_interrupt_named_prompt_only(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    first = await submit(server, slow(steps=30, delay=0.03), client_id)
    later_prompt = slow(steps=2, delay=0.0)
    later_prompt["s"]["inputs"]["value"] = 2
    second = await submit(server, later_prompt, client_id)
    await wait_for_executing(ws, "s")
    # Naming the pending prompt is a no-op: the running one completes.
    async with server.post("/interrupt", json={"prompt_id": second}) as resp:
        assert resp.status == 200
    first_messages = [m for m in await collect(ws, first) if isinstance(m, dict)]
    assert of_type(first_messages, "execution_success")
    assert not of_type(first_messages, "execution_interrupted")
    second_messages = [m for m in await collect(ws, second) if isinstance(m, dict)]
    assert of_type(second_messages, "execution_success")

    third = await submit(server, slow(), client_id)
    await wait_for_executing(ws, "s")
    async with server.post("/interrupt", json={"prompt_id": third}) as resp:
        assert resp.status == 200
    third_messages = [m for m in await collect(ws, third) if isinstance(m, dict)]
    assert of_type(third_messages, "execution_interrupted")[0]["prompt_id"] == third


async def test_interrupt_reaches_sleeping_async_nodes(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "a": {"class_type": "ExecAsyncSleep", "inputs": {"seconds": 5.0, "value": 1}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["a", 0]}},
    }
    prompt_id = await submit(server, prompt, client_id)
    await wait_for_executing(ws, "a")
    started = time.monotonic()
    await server.post("/interrupt")
    messages = [m for m in await collect(ws, prompt_id) if isinstance(m, dict)]
    assert time.monotonic() - started < 1.5
    assert of_type(messages, "execution_interrupted")[0]["node_id"] == "a"


async def test_lifecycle_events_precede_the_end_marker(comfy_server):
    server = await start(comfy_server)
    seen: list[object] = []
    server.kernel.bus.subscribe(seen.append)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 3}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    prompt_id = of_type(messages, "execution_start")[0]["prompt_id"]
    started = [i for i, e in enumerate(seen) if isinstance(e, PromptStarted)]
    finished = [i for i, e in enumerate(seen) if isinstance(e, PromptFinished)]
    end = [
        i
        for i, e in enumerate(seen)
        if isinstance(e, ServerMessage) and e.type == "executing" and e.data["node"] is None
    ]
    assert len(started) == len(finished) == len(end) == 1
    assert started[0] < finished[0] < end[0]
    event = seen[finished[0]]
    assert event.item.prompt_id == prompt_id
    assert event.status["status_str"] == "success" and event.status["completed"] is True
    assert [m[0] for m in event.status["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert event.outputs == {"2": {"values": [3]}}
    assert event.meta == {
        "2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}
    }
    # After the end marker the queue is empty again.
    status, body = await server.json("GET", "/queue")
    assert body == {"queue_running": [], "queue_pending": []}


async def test_failed_prompt_keeps_earlier_outputs(comfy_server):
    server = await start(comfy_server)
    seen: list[object] = []
    server.kernel.bus.subscribe(seen.append)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 3}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "ExecFail", "inputs": {"value": ["1", 0]}},
        "4": {"class_type": "ExecShow", "inputs": {"value": ["3", 0]}},
    }
    await run(server, ws, client_id, prompt)
    event = next(e for e in seen if isinstance(e, PromptFinished))
    assert event.status["status_str"] == "error" and event.status["completed"] is False
    assert event.status["messages"][-1][0] == "execution_error"
    assert event.outputs == {"2": {"values": [3]}}


async def test_reconnect_replays_the_executing_node(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt_id = await submit(server, slow(steps=20, delay=0.05), client_id)
    await wait_for_executing(ws, "s")
    again = await server.ws(client_id)
    first = await again.receive_json(timeout=5)
    assert first["type"] == "status"
    replay = await again.receive_json(timeout=5)
    assert replay == {"type": "executing", "data": {"node": "s"}}
    messages = [m for m in await collect(again, prompt_id) if isinstance(m, dict)]
    assert executed_ui(messages) == {"out": {"values": [1]}}
    await asyncio.gather(ws.close(), again.close())


async def test_history_holds_the_prompt_when_the_end_marker_arrives(comfy_server):
    server = await comfy_server(plugins=[EXEC_PACK, "history"])
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 6}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    for _ in range(2):  # the second run is fully cached and must still record its outputs
        prompt_id = await submit(server, prompt, client_id)
        await collect(ws, prompt_id)
        status, history = await server.json("GET", f"/history/{prompt_id}")
        assert status == 200
        entry = history[prompt_id]
        assert entry["outputs"] == {"2": {"values": [6]}}
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert entry["meta"]["2"]["display_node"] == "2"
