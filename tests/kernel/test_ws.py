"""GET /ws: first message, clientId reuse, the feature-flag handshake, status broadcasts."""

from __future__ import annotations

import asyncio
import re

from kernel.events import ServerMessage


async def assert_silent(ws, seconds: float = 0.3) -> None:
    """Nothing more arrives on ``ws`` for ``seconds``."""
    try:
        extra = await ws.receive(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {extra}")


async def test_first_message_is_status_with_minted_sid(comfy_server):
    server = await comfy_server(plugins=[])
    ws = await server.ws()
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "status"
    sid = first["data"]["sid"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid)
    assert first["data"]["status"] == {"exec_info": {"queue_remaining": 0}}
    await ws.close()


async def test_same_client_id_reconnect_replaces_first(comfy_server):
    server = await comfy_server(plugins=[])
    first = await server.ws("client-1")
    assert (await first.receive_json(timeout=5))["data"]["sid"] == "client-1"
    second = await server.ws("client-1")
    assert (await second.receive_json(timeout=5))["data"]["sid"] == "client-1"
    server.kernel.bus.publish(ServerMessage(type="hello", data={"n": 1}, sid="client-1"))
    assert await second.receive_json(timeout=5) == {"type": "hello", "data": {"n": 1}}
    # The replaced socket gets nothing more: it is closed (execution-semantics §12, newer).
    msg = await first.receive(timeout=5)
    assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING"), msg
    await first.close()
    await second.close()


async def test_feature_flag_handshake(comfy_server):
    server = await comfy_server(plugins=[], feature_flags={"custom_flag": 7})
    ws = await server.ws("flags")
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "feature_flags"
    assert reply["data"]["supports_preview_metadata"] is True
    assert reply["data"]["max_upload_size"] == 100 * 1024 * 1024
    assert reply["data"]["custom_flag"] == 7
    hub_client = server.kernel.stash[__import__("kernel.builtin.ws", fromlist=["HUB"]).HUB].clients["flags"]
    assert hub_client.feature_flags == {"supports_preview_metadata": True}
    # Only the first message is inspected.
    await ws.send_json({"type": "feature_flags", "data": {}})
    await assert_silent(ws)
    await ws.close()


async def test_addressing_broadcast_and_nobody(comfy_server):
    server = await comfy_server(plugins=[])
    a, b = await server.ws("a"), await server.ws("b")
    await a.receive_json(timeout=5)
    await b.receive_json(timeout=5)
    bus = server.kernel.bus
    bus.publish(ServerMessage(type="private", data={}, sid=None, broadcast=False))
    bus.publish(ServerMessage(type="for_b", data={}, sid="b"))
    bus.publish(ServerMessage(type="everyone", data={}, broadcast=True))
    assert (await a.receive_json(timeout=5))["type"] == "everyone"
    assert (await b.receive_json(timeout=5))["type"] == "for_b"
    assert (await b.receive_json(timeout=5))["type"] == "everyone"
    await a.close()
    await b.close()


async def test_binary_frames_carry_big_endian_type(comfy_server):
    server = await comfy_server(plugins=[])
    ws = await server.ws("bin")
    await ws.receive_json(timeout=5)
    server.kernel.bus.publish(
        ServerMessage(type="preview", data=b"\x00\x00\x00\x02PNG", sid="bin", binary_type=1)
    )
    frame = await ws.receive_bytes(timeout=5)
    assert frame == b"\x00\x00\x00\x01\x00\x00\x00\x02PNG"
    await ws.close()


async def test_queue_change_broadcasts_status(comfy_server):
    from kernel.queue import QueueItem

    server = await comfy_server(plugins=[])
    ws = await server.ws("watch")
    await ws.receive_json(timeout=5)
    server.kernel.queue.put(QueueItem(number=0, prompt_id="p1", prompt={}))
    msg = await ws.receive_json(timeout=5)
    assert msg == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}
    await ws.close()


def _status(n: int) -> dict:
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": n}}}}


async def test_status_changes_within_a_window_are_merged_per_socket(comfy_server):
    """Under load every queue change is a broadcast. The first change goes out at once; further
    changes within the window reach a socket as one (the latest count), before that socket's next
    other message or at the window's end, so per-socket order stays the reference's."""
    from kernel.builtin.ws import HUB, STATUS_COALESCE_SECONDS
    from kernel.events import QueueChanged

    server = await comfy_server(plugins=[])
    watch = await server.ws("watch")
    idle = await server.ws("idle")
    await watch.receive_json(timeout=5)
    await idle.receive_json(timeout=5)
    bus = server.kernel.bus
    for n in (1, 2, 3):
        bus.publish(QueueChanged(queue_remaining=n))
    bus.publish(ServerMessage(type="hello", data={}, sid="watch"))
    bus.publish(QueueChanged(queue_remaining=4))
    # The addressed socket: the first count at once, the merged one before its message, then
    # the newer count at the window's end.
    assert await watch.receive_json(timeout=5) == _status(1)
    assert await watch.receive_json(timeout=5) == _status(3)
    assert await watch.receive_json(timeout=5) == {"type": "hello", "data": {}}
    assert await watch.receive_json(timeout=5) == _status(4)
    # The other socket saw no message in between: the first count, then only the latest.
    assert await idle.receive_json(timeout=5) == _status(1)
    assert await idle.receive_json(timeout=5) == _status(4)
    for ws in (watch, idle):
        await assert_silent(ws)
    # After a quiet window, a change goes out at once again: queued for every socket before
    # publish returns, no timer left waiting.
    await asyncio.sleep(STATUS_COALESCE_SECONDS * 2)
    bus.publish(QueueChanged(queue_remaining=0))
    hub = server.kernel.stash[HUB]
    assert hub._status_timer is None
    assert all(client.status_seen == hub.status_version for client in hub.clients.values())
    for ws in (watch, idle):
        assert await ws.receive_json(timeout=5) == _status(0)
        await ws.close()


async def test_non_string_client_id_reaches_nobody(comfy_server, caplog):
    # POST /prompt copies client_id from the body as any JSON value; an object used to make
    # the hub's lookup raise (unhashable) on every message of that prompt.
    server = await comfy_server(plugins=[])
    ws = await server.ws("obs")
    await ws.receive_json(timeout=5)
    bus = server.kernel.bus
    bus.publish(ServerMessage(type="executing", data={}, sid={"a": 1}, broadcast=True))
    bus.publish(ServerMessage(type="for_obs", data={}, sid="obs"))
    assert (await ws.receive_json(timeout=5))["type"] == "for_obs"
    assert not [r for r in caplog.records if "subscriber" in r.getMessage()]
    await ws.close()


async def test_client_disconnected_is_published_once_the_id_is_free(comfy_server):
    """A closed socket announces ``ClientDisconnected``; one replaced by a reconnect with the same
    clientId does not (the id is still connected)."""
    import asyncio

    from kernel.events import ClientDisconnected

    server = await comfy_server(plugins=[])
    gone: list[str] = []
    server.kernel.bus.subscribe(lambda e: gone.append(e.sid) if isinstance(e, ClientDisconnected) else None)

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0.02)

    first = await server.ws("same")
    await first.receive_json(timeout=5)
    second = await server.ws("same")
    await second.receive_json(timeout=5)
    await first.close()
    await settle()
    assert gone == []
    await second.close()
    for _ in range(100):
        if gone:
            break
        await asyncio.sleep(0.02)
    assert gone == ["same"]


def test_status_published_off_the_server_loop_is_not_left_on_a_timer(make_kernel):
    """A queue change published from another running loop (the executor's per-prompt loop while
    the bus is unbound) is sent at once: a timer there might never fire, leaving every later
    status waiting for some other message."""
    import asyncio

    from kernel.builtin.ws import HUB
    from kernel.events import QueueChanged

    kernel = make_kernel(plugins=[])
    hub = kernel.stash[HUB]

    async def publish_twice() -> None:
        kernel.bus.publish(QueueChanged(queue_remaining=1))
        kernel.bus.publish(QueueChanged(queue_remaining=2))

    asyncio.run(publish_twice())
    assert hub._status_timer is None
    assert hub.status_version == 2
