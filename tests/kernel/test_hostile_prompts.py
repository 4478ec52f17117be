"""Big and hostile prompts through the real server: linear progress traffic, bounded send
queues, the runaway-prompt limits and the release of outputs nobody needs any more."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from kernel.builtin.ws import HUB, SEND_QUEUE_LIMIT
from kernel.builtin.ws_send import LatestFrame, SealingFrame, SendQueue
from kernel.events import ServerMessage
from kernel.executor.guards import GIB
from tests.kernel.exec_helpers import EXEC_PACK, collect, connect, of_type, submit
from tests.nodepack import hostile

HOSTILE = ("hostile", hostile)


def loop_prompt(iterations: int, size: int = 512, seed: int = 1) -> dict[str, Any]:
    return {
        "img": {"class_type": "HostileImage", "inputs": {"size": size, "seed": seed}},
        "loop": {"class_type": "HostileCloneLoop", "inputs": {"image": ["img", 0], "remaining": iterations}},
        "out": {"class_type": "HostileAlive", "inputs": {"image": ["loop", 0]}},
    }


def small_prompt(seed: int = 3) -> dict[str, Any]:
    return {
        "img": {"class_type": "HostileImage", "inputs": {"size": 8, "seed": seed}},
        "out": {"class_type": "HostileAlive", "inputs": {"image": ["img", 0]}},
    }


def text_frames(frames: list[Any]) -> list[dict[str, Any]]:
    return [f for f in frames if isinstance(f, dict)]


# --- progress traffic -----------------------------------------------------------------------


async def test_progress_state_traffic_is_linear_in_a_long_chain(comfy_server: Any) -> None:
    length = 1500
    server = await comfy_server(plugins=[EXEC_PACK], cache_none=True)
    client_id, ws = await connect(server)
    prompt: dict[str, Any] = {"0": {"class_type": "ExecConst", "inputs": {"value": 0}}}
    for i in range(1, length - 1):
        prompt[str(i)] = {"class_type": "ExecAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt[str(length - 1)] = {"class_type": "ExecShow", "inputs": {"value": [str(length - 2), 0]}}
    prompt_id = await submit(server, prompt, client_id)
    messages = text_frames(await collect(ws, prompt_id, timeout=120))

    types = [m["type"] for m in messages]
    assert types.count("executing") == length + 1  # every node, then the end marker
    states = of_type(messages, "progress_state")
    # The state a client holds when the prompt ends is complete and current.
    final = [m for m in messages[: types.index("execution_success")] if m["type"] == "progress_state"][-1]
    assert len(final["data"]["nodes"]) == length
    assert all(node["state"] == "finished" for node in final["data"]["nodes"].values())
    # Coalesced: far fewer frames than the 2 per node a frame per change would be, and bytes far
    # under the quadratic total (2 frames per node, each listing every node seen so far).
    final_bytes = len(json.dumps(final))
    sent = sum(len(json.dumps(m)) for m in messages if m["type"] == "progress_state")
    assert len(states) < length / 5
    assert sent < final_bytes * length / 20
    # States only move forward: a later frame never lists fewer nodes or unfinishes one.
    seen: dict[str, str] = {}
    for state in states:
        nodes = state["nodes"]
        assert set(seen) <= set(nodes)
        assert all(not (seen[n] == "finished" and nodes[n]["state"] != "finished") for n in seen)
        seen = {n: v["state"] for n, v in nodes.items()}
    await ws.close()


async def test_progress_state_traffic_is_linear_with_many_output_nodes(comfy_server: Any) -> None:
    # Each output node's `executed` wants the current state before it: flushing a full frame
    # for every one of them would be quadratic. The flushes share the byte budget instead.
    width = 1500
    server = await comfy_server(plugins=[EXEC_PACK], cache_none=True)
    client_id, ws = await connect(server)
    prompt: dict[str, Any] = {"c": {"class_type": "ExecConst", "inputs": {"value": 1}}}
    for i in range(width):
        prompt[f"s{i}"] = {"class_type": "ExecShow", "inputs": {"value": ["c", 0]}}
    prompt_id = await submit(server, prompt, client_id)
    messages = text_frames(await collect(ws, prompt_id, timeout=120))
    types = [m["type"] for m in messages]
    assert types.count("executed") == width
    final = [m for m in messages[: types.index("execution_success")] if m["type"] == "progress_state"][-1]
    assert len(final["data"]["nodes"]) == width + 1
    assert all(node["state"] == "finished" for node in final["data"]["nodes"].values())
    sent = sum(len(json.dumps(m)) for m in messages if m["type"] == "progress_state")
    assert sent < len(json.dumps(final)) * width / 20
    assert server.kernel.stash[HUB].clients.get(client_id) is not None, "the client kept up"
    await ws.close()


async def test_small_prompts_get_the_current_state_before_every_output(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[EXEC_PACK], cache_none=True)
    client_id, ws = await connect(server)
    prompt: dict[str, Any] = {"c": {"class_type": "ExecConst", "inputs": {"value": 1}}}
    for i in range(10):
        prompt[f"s{i}"] = {"class_type": "ExecShow", "inputs": {"value": ["c", 0]}}
    prompt_id = await submit(server, prompt, client_id)
    messages = text_frames(await collect(ws, prompt_id))
    state: dict[str, Any] = {}
    for message in messages:
        if message["type"] == "progress_state":
            state = message["data"]["nodes"]
        elif message["type"] == "executed":
            # The node whose output this is shows as started (running or finished) already.
            assert message["data"]["node"] in state
    await ws.close()


async def test_send_queue_is_bounded_in_bytes_and_keeps_only_the_latest_state() -> None:
    queue = SendQueue(max_frames=100, max_bytes=1000)
    assert queue.put("a" * 600)
    assert not queue.put("b" * 600), "past the byte limit"
    assert queue.put("c" * 100)
    assert queue.bytes == 700
    # A newer state takes the place of the one still waiting, an older one is ignored.
    assert queue.put(LatestFrame("s1" * 10, key="p", version=1))
    assert queue.put(LatestFrame("s2" * 10, key="p", version=2))
    assert queue.put(LatestFrame("s0" * 10, key="p", version=0))
    assert len(queue) == 3
    # A sealing frame fixes the state queued before it: the next state queues behind it.
    assert queue.put(SealingFrame("executed"))
    assert queue.put(LatestFrame("s3" * 10, key="p", version=3))
    assert [await queue.get() for _ in range(5)] == ["a" * 600, "c" * 100, "s2" * 10, "executed", "s3" * 10]
    assert queue.bytes == 0
    queue.close()
    assert await queue.get() is None


async def _stalled_socket(url: str, client_id: str) -> asyncio.StreamWriter:
    """A WebSocket handshake, then silence: the client never reads what follows."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        (
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 101")
    return writer


async def test_client_behind_by_too_many_bytes_is_dropped_with_a_log_line(
    comfy_server: Any, caplog: Any
) -> None:
    server = await comfy_server()
    hub = server.kernel.stash[HUB]
    stalled = await _stalled_socket(server.url, "stalled")
    for _ in range(100):
        if "stalled" in hub.clients:
            break
        await asyncio.sleep(0.02)
    pad = "x" * (1024 * 1024)
    frames = 48  # 48 MiB: past the byte bound, far under the frame bound
    assert frames < SEND_QUEUE_LIMIT
    with caplog.at_level(logging.WARNING, logger="comfykernel.ws"):
        for i in range(frames):
            server.kernel.bus.publish(ServerMessage(type="big", data={"i": i, "pad": pad}, sid="stalled"))
            await asyncio.sleep(0)
    assert "stalled" not in hub.clients
    assert any("dropping WebSocket client stalled" in r.getMessage() for r in caplog.records)
    stalled.transport.abort()


# --- limits ---------------------------------------------------------------------------------


async def _run_watching(
    server: Any, ws: Any, client_id: str, prompt: dict[str, Any]
) -> tuple[list[Any], int]:
    """Run ``prompt`` while polling /system_stats; (frames, the highest RSS seen)."""
    prompt_id = await submit(server, prompt, client_id)
    process = psutil.Process()
    highest = process.memory_info().rss
    done = asyncio.ensure_future(collect(ws, prompt_id, timeout=240))
    while not done.done():
        started = time.monotonic()
        status, _ = await server.json("GET", "/system_stats")
        assert status == 200
        assert time.monotonic() - started < 5, "the server stopped answering while the prompt ran"
        highest = max(highest, process.memory_info().rss)
        await asyncio.wait([done], timeout=0.05)
    return text_frames(done.result()), highest


def _error(messages: list[dict[str, Any]]) -> dict[str, Any]:
    (error,) = of_type(messages, "execution_error")
    assert error["exception_type"] == "kernel.executor.guards.PromptLimitExceeded"
    return error


async def _small_prompt_succeeds(server: Any, ws: Any, client_id: str) -> None:
    prompt_id = await submit(server, small_prompt(), client_id)
    messages = text_frames(await collect(ws, prompt_id, timeout=30))
    assert of_type(messages, "execution_success")


async def test_self_cloning_loop_stops_at_the_memory_ceiling(comfy_server: Any) -> None:
    gc.collect()
    ceiling = psutil.Process().memory_info().rss + 300 * 1024 * 1024
    # The default cache policy keeps every iteration's 3 MB image: memory grows until the ceiling.
    server = await comfy_server(plugins=[HOSTILE], max_memory=ceiling / GIB)
    client_id, ws = await connect(server)
    messages, highest = await _run_watching(server, ws, client_id, loop_prompt(100_000))
    error = _error(messages)
    assert "--max-memory" in error["exception_message"]
    assert error["node_id"] == "loop"  # the expanded nodes are blamed on the node the user placed
    # Checked between nodes: at most a few 3 MB images past the ceiling.
    assert highest < ceiling + 64 * 1024 * 1024
    # What the prompt stored in the cache went with it.
    assert len(server.kernel.executor.outputs) <= 2
    await _small_prompt_succeeds(server, ws, client_id)
    await ws.close()


async def test_self_cloning_loop_stops_at_the_expansion_depth_with_flat_memory(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[HOSTILE], cache_none=True, max_expansion_depth=300)
    client_id, ws = await connect(server)
    gc.collect()
    before = hostile.alive_images()
    rss_before = psutil.Process().memory_info().rss
    messages, highest = await _run_watching(server, ws, client_id, loop_prompt(100_000))
    error = _error(messages)
    assert "--max-expansion-depth" in error["exception_message"] and "300" in error["exception_message"]
    # 300 iterations ran; each 3 MB image was let go once the next one was made (kept, they
    # would have added 900 MB).
    assert len(of_type(messages, "executing")) > 300
    assert highest - rss_before < 300 * 1024 * 1024
    gc.collect()
    assert hostile.alive_images() - before <= 1
    await _small_prompt_succeeds(server, ws, client_id)
    await ws.close()


async def test_self_cloning_loop_stops_at_the_node_limit(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[HOSTILE], cache_none=True, max_prompt_nodes=200)
    client_id, ws = await connect(server)
    messages, _ = await _run_watching(server, ws, client_id, loop_prompt(100_000, size=8))
    error = _error(messages)
    assert "--max-prompt-nodes" in error["exception_message"] and "200" in error["exception_message"]
    await _small_prompt_succeeds(server, ws, client_id)
    # A prompt already over the limit as submitted stops at its start.
    big = {str(i): {"class_type": "HostileImage", "inputs": {"size": 1, "seed": i}} for i in range(199)}
    big["out1"] = {"class_type": "HostileAlive", "inputs": {"image": ["0", 0]}}
    big["out2"] = {"class_type": "HostileAlive", "inputs": {"image": ["1", 0]}}
    prompt_id = await submit(server, big, client_id)
    assert "--max-prompt-nodes" in _error(text_frames(await collect(ws, prompt_id)))["exception_message"]
    await ws.close()


# --- releasing outputs ----------------------------------------------------------------------


async def test_outputs_are_released_after_their_last_consumer_unless_cached(comfy_server: Any) -> None:
    iterations = 40
    for cache_none, most_alive in ((True, 3), (False, iterations + 1)):
        server = await comfy_server(plugins=[HOSTILE], cache_none=cache_none)
        client_id, ws = await connect(server)
        gc.collect()
        before = hostile.alive_images()
        prompt_id = await submit(
            server, loop_prompt(iterations, size=64, seed=iterations + cache_none), client_id
        )
        messages = text_frames(await collect(ws, prompt_id, timeout=60))
        (ui,) = [d["output"] for d in of_type(messages, "executed")]
        alive = ui["alive"][0] - before
        if cache_none:
            # Without a cache, only the images still to be read live at the end of the loop.
            assert alive <= most_alive, alive
        else:
            # The cache policy keeps every output of the prompt.
            assert alive >= most_alive, alive
        await ws.close()
