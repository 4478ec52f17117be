"""/internal/logs, /internal/logs/raw and PATCH /internal/logs/subscribe (the logs WS stream)."""

from __future__ import annotations

import asyncio
import json
import logging

from plugins.frontend_ext.logs import CAPACITY, LOG_BUFFER

log = logging.getLogger("comfykernel.test.frontend_logs")


async def test_logs_text_and_raw(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    log.warning("marker line one")
    status, text = await server.json("GET", "/internal/logs")
    assert status == 200 and isinstance(text, str)
    assert "marker line one" in text and text.endswith("\n")
    status, raw = await server.json("GET", "/internal/logs/raw")
    assert status == 200
    assert set(raw) == {"entries", "size"}
    assert set(raw["size"]) == {"cols", "rows"}
    entry = raw["entries"][-1]
    assert set(entry) == {"t", "m"} and "marker line one" in entry["m"]
    # internal routes have no /api twin
    async with server.get("/api/internal/logs") as resp:
        assert resp.status == 404


async def test_ring_buffer_keeps_the_newest(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    for i in range(CAPACITY + 20):
        log.warning("flood %d", i)
    _, raw = await server.json("GET", "/internal/logs/raw")
    assert len(raw["entries"]) == CAPACITY
    assert f"flood {CAPACITY + 19}" in raw["entries"][-1]["m"]
    assert not any("flood 0\n" in e["m"] for e in raw["entries"])


async def test_handler_removed_at_shutdown(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    handler = server.kernel.stash[LOG_BUFFER]
    assert handler in logging.getLogger().handlers
    await server.stop()
    assert handler not in logging.getLogger().handlers


async def _next_logs(ws, timeout: float = 5.0) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        data = json.loads(msg.data)
        if data["type"] == "logs":
            return data["data"]


async def test_subscribe_streams_logs_to_that_client(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    ws = await server.ws("watcher")
    other = await server.ws("bystander")
    async with server.request(
        "PATCH", "/internal/logs/subscribe", json={"clientId": "watcher", "enabled": True}
    ) as r:
        assert r.status == 200
        assert await r.read() == b""
    log.warning("streamed line")
    data = await _next_logs(ws)
    assert "streamed line" in data["entries"][0]["m"]
    assert set(data["size"]) == {"cols", "rows"}
    # the bystander never subscribed: after its status message nothing else arrives
    first = json.loads((await asyncio.wait_for(other.receive(), 5)).data)
    assert first["type"] == "status"
    try:
        msg = await asyncio.wait_for(other.receive(), 0.3)
        assert json.loads(msg.data)["type"] != "logs"
    except TimeoutError:
        pass

    async with server.request(
        "PATCH", "/internal/logs/subscribe", json={"clientId": "watcher", "enabled": False}
    ) as r:
        assert r.status == 200
    assert "watcher" not in server.kernel.stash[LOG_BUFFER].subscribers
    await ws.close()
    await other.close()


async def test_subscribe_rejects_bad_bodies(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    for body in (
        {"enabled": True},
        {"clientId": "x"},
        {"clientId": "", "enabled": True},
        [1],
        {"clientId": 3, "enabled": True},
    ):
        async with server.request("PATCH", "/internal/logs/subscribe", json=body) as r:
            assert r.status == 400, body
            assert "error" in await r.json()
    async with server.request("PATCH", "/internal/logs/subscribe", data=b"{not json") as r:
        assert r.status == 400
        assert "error" in await r.json()


async def test_a_closed_socket_loses_its_log_subscription(comfy_server):
    """Subscriptions of clients that went away are let go, not kept (and streamed to) forever."""
    server = await comfy_server(plugins=["frontend_ext"])
    buffer = server.kernel.stash[LOG_BUFFER]
    ws = await server.ws("leaver")
    stays = await server.ws("stayer")
    for client_id in ("leaver", "stayer"):
        body = {"clientId": client_id, "enabled": True}
        async with server.request("PATCH", "/internal/logs/subscribe", json=body) as r:
            assert r.status == 200
    assert buffer.subscribers == {"leaver", "stayer"}
    await ws.close()
    for _ in range(100):
        if "leaver" not in buffer.subscribers:
            break
        await asyncio.sleep(0.02)
    assert buffer.subscribers == {"stayer"}
    log.warning("after the leaver left")
    data = await _next_logs(stays)
    assert "after the leaver left" in data["entries"][0]["m"]
    await stays.close()


async def test_subscription_of_a_client_with_no_socket_is_let_go(comfy_server):
    """A subscription whose clientId has no socket (made up, or racing its close) is dropped at
    the next log line, as the reference does, instead of being streamed to nobody forever."""
    server = await comfy_server(plugins=["frontend_ext"])
    buffer = server.kernel.stash[LOG_BUFFER]
    body = {"clientId": "ghost", "enabled": True}
    async with server.request("PATCH", "/internal/logs/subscribe", json=body) as r:
        assert r.status == 200
    assert "ghost" in buffer.subscribers
    log.warning("a line after the ghost subscribed")
    assert "ghost" not in buffer.subscribers
