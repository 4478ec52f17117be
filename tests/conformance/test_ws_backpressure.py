"""A WebSocket client that never reads is dropped, not buffered forever; readers are unaffected."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from kernel.builtin.ws import HUB, SEND_QUEUE_LIMIT
from kernel.builtin.ws_send import SEND_QUEUE_BYTES
from kernel.events import ServerMessage

FRAME_BYTES = 8 * 1024


async def _stalled_socket(url: str, client_id: str) -> asyncio.StreamWriter:
    """A raw WebSocket handshake, then silence: the client never reads a byte of what follows."""
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


async def test_client_that_never_reads_is_dropped(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    hub = server.kernel.stash[HUB]
    stalled = await _stalled_socket(server.url, "stalled")
    reader_ws = await server.ws("reader")
    for _ in range(50):
        if {"stalled", "reader"} <= set(hub.clients):
            break
        await asyncio.sleep(0.02)
    assert {"stalled", "reader"} <= set(hub.clients)

    received = 0

    async def read_all() -> None:
        nonlocal received
        async for msg in reader_ws:
            if json.loads(msg.data)["type"] == "flood":
                received += 1

    reading = asyncio.create_task(read_all())
    pad = "x" * FRAME_BYTES
    # A warm-up the reader gets too: what the first frames load lazily is not the flood's memory.
    warm_up = 64
    for i in range(warm_up):
        server.kernel.bus.publish(ServerMessage(type="flood", data={"i": i, "pad": pad}, broadcast=True))
        await asyncio.sleep(0.002)
    for _ in range(250):
        if received == warm_up:
            break
        await asyncio.sleep(0.02)
    rss_before = psutil.Process().memory_info().rss
    # Enough to fill the socket buffers and then the byte-bounded send queue several times over
    # (the byte bound is reached long before the frame count one).
    flood = 3 * (SEND_QUEUE_BYTES // FRAME_BYTES)
    assert flood < SEND_QUEUE_LIMIT
    total = warm_up + flood
    for i in range(warm_up, total):
        server.kernel.bus.publish(ServerMessage(type="flood", data={"i": i, "pad": pad}, broadcast=True))
        # Paced like a busy event stream, so a client that does read keeps up.
        await asyncio.sleep(0.002 if i % 8 == 0 else 0)
    for _ in range(500):
        if received == total:
            break
        await asyncio.sleep(0.02)

    assert "stalled" not in hub.clients, "a client that never reads must be dropped"
    assert "reader" in hub.clients
    assert received == total, "the reading client gets every frame"
    # Nothing kept the stalled client's backlog: memory did not grow by the flood's size.
    flood_bytes = flood * FRAME_BYTES
    assert psutil.Process().memory_info().rss - rss_before < flood_bytes
    reading.cancel()
    await reader_ws.close()
    stalled.transport.abort()
