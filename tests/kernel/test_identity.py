"""The kernel's ownership rule with a principal from the identify hook (a stand-in plugin here;
plugins/auth is the real one): /queue, /interrupt, /ws and /view through the real server."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp

from kernel import hookimpl
from kernel.identity import Principal
from tests.kernel.exec_helpers import EXEC_PACK

SLOW = {
    "1": {"class_type": "ExecSteps", "inputs": {"steps": 200, "delay": 0.05, "value": 1}},
    "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
}


class HeaderIdentity:
    """Trusts an X-Test-User header: good enough to drive the kernel's rule in a test."""

    @hookimpl
    def identify(self, request: Any) -> Principal | None:
        user = request.headers.get("X-Test-User") or request.query.get("test_user")
        if not user:
            return None
        return Principal(user=user, admin=user == "root")

    @hookimpl
    def may_read_file(self, request: Any, folder_type: str, path: Any) -> bool | None:
        if folder_type == "output" and path.name.startswith("private_"):
            return request.headers.get("X-Test-User") == "root"
        return None


def as_user(name: str) -> dict[str, str]:
    return {"X-Test-User": name}


async def start(comfy_server: Any) -> Any:
    return await comfy_server(plugins=[EXEC_PACK, ("ident", HeaderIdentity())])


async def queue_slow(server: Any, user: str, client_id: str | None = None) -> str:
    body: dict[str, Any] = {"prompt": SLOW}
    if client_id:
        body["client_id"] = client_id
    status, answer = await server.json("POST", "/prompt", json=body, headers=as_user(user))
    assert status == 200, answer
    return answer["prompt_id"]


async def wait_running(server: Any, prompt_id: str) -> None:
    for _ in range(200):
        if server.kernel.queue.is_running(prompt_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the prompt never started")


async def queue_ids(server: Any, user: str) -> tuple[list[str], list[str]]:
    _, body = await server.json("GET", "/queue", headers=as_user(user))
    return [i[1] for i in body["queue_running"]], [i[1] for i in body["queue_pending"]]


async def test_hook_identify(comfy_server):
    server = await start(comfy_server)
    a_running = await queue_slow(server, "alice")
    await wait_running(server, a_running)
    a_pending = await queue_slow(server, "alice")
    b_pending = await queue_slow(server, "bob")
    # The owner is the principal's user, whatever the body claimed.
    item = next(i for i in server.kernel.queue.snapshot()[1] if i.prompt_id == b_pending)
    assert item.extra_data["comfy_user"] == "bob"

    assert await queue_ids(server, "alice") == ([a_running], [a_pending])
    assert await queue_ids(server, "bob") == ([], [b_pending])
    assert await queue_ids(server, "root") == ([a_running], [a_pending, b_pending])

    # Bob can neither delete, clear nor interrupt Alice's prompts.
    async with server.post("/queue", json={"delete": [a_pending]}, headers=as_user("bob")) as resp:
        assert resp.status == 200
    async with server.post("/queue", json={"clear": True}, headers=as_user("bob")) as resp:
        assert resp.status == 200
    assert server.kernel.queue.is_pending(a_pending) and not server.kernel.queue.is_pending(b_pending)
    for body in ({}, {"prompt_id": a_running}):
        async with server.post("/interrupt", json=body, headers=as_user("bob")) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.3)
    assert server.kernel.queue.is_running(a_running)
    # The admin may.
    async with server.post("/interrupt", json={}, headers=as_user("root")) as resp:
        assert resp.status == 200
    async with server.post("/queue", json={"clear": True}, headers=as_user("root")) as resp:
        assert resp.status == 200
    assert not server.kernel.queue.is_pending(a_pending)


async def test_users_interrupt_their_own(comfy_server):
    server = await start(comfy_server)
    running = await queue_slow(server, "alice")
    await wait_running(server, running)
    async with server.post("/interrupt", json={}, headers=as_user("alice")) as resp:
        assert resp.status == 200
    for _ in range(200):
        if not server.kernel.queue.is_running(running):
            break
        await asyncio.sleep(0.02)
    assert not server.kernel.queue.is_running(running)


async def _frames(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[Any]:
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        if msg.type == aiohttp.WSMsgType.TEXT:
            frames.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
        else:
            break
    return frames


def _about(frames: list[Any], prompt_id: str) -> list[Any]:
    return [f for f in frames if isinstance(f, dict) and (f.get("data") or {}).get("prompt_id") == prompt_id]


async def test_websocket_messages_reach_owners_only(comfy_server):
    server = await start(comfy_server)
    quick = {
        "1": {"class_type": "ExecSteps", "inputs": {"steps": 3, "delay": 0.01, "value": 1, "preview": True}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    sockets = {}
    for user in ("alice", "bob", "root"):
        sockets[user] = await server.session.ws_connect(f"{server.url}/ws?clientId=c-{user}&test_user={user}")
        assert (await sockets[user].receive_json(timeout=5))["type"] == "status"
    # Bob asks for Alice's live clientId: he gets a fresh one instead of her socket.
    thief = await server.session.ws_connect(f"{server.url}/ws?clientId=c-alice&test_user=bob")
    first = await thief.receive_json(timeout=5)
    assert first["data"]["sid"] != "c-alice"
    # Broadcast (no client_id) and addressed prompts of Alice.
    status, answer = await server.json("POST", "/prompt", json={"prompt": quick}, headers=as_user("alice"))
    broadcast_id = answer["prompt_id"]
    status, answer = await server.json(
        "POST", "/prompt", json={"prompt": quick, "client_id": "c-alice"}, headers=as_user("alice")
    )
    addressed_id = answer["prompt_id"]
    got = {user: await _frames(ws, 2.0) for user, ws in {**sockets, "thief": thief}.items()}
    assert _about(got["alice"], broadcast_id) and _about(got["alice"], addressed_id)
    assert _about(got["root"], broadcast_id)
    assert _about(got["bob"], broadcast_id) == [] and _about(got["thief"], addressed_id) == []
    # Previews (binary frames) go to the owner only.
    assert any(isinstance(f, bytes) for f in got["alice"])
    assert not any(isinstance(f, bytes) for f in got["bob"] + got["thief"])


async def test_without_a_principal_nothing_is_filtered(comfy_server):
    server = await comfy_server(plugins=[EXEC_PACK])
    status, answer = await server.json(
        "POST", "/prompt", json={"prompt": SLOW, "prompt_id": str(uuid.uuid4())}
    )
    assert status == 200
    _, body = await server.json("GET", "/queue", headers=as_user("bob"))
    assert [i[1] for i in body["queue_running"] + body["queue_pending"]] == [answer["prompt_id"]]
    async with server.post("/interrupt", json={}) as resp:
        assert resp.status == 200


async def test_hook_may_read_file(comfy_server):
    server = await start(comfy_server)
    out = server.kernel.settings.output_path
    out.mkdir(parents=True, exist_ok=True)
    (out / "private_a.png").write_bytes(b"x")
    (out / "public.png").write_bytes(b"y")
    status, _ = await server.json("GET", "/view?filename=private_a.png", headers=as_user("bob"))
    assert status == 403
    async with server.get("/view?filename=private_a.png", headers=as_user("root")) as resp:
        assert resp.status == 200 and await resp.read() == b"x"
    async with server.get("/view?filename=public.png", headers=as_user("bob")) as resp:
        assert resp.status == 200
    _, names = await server.json("GET", "/internal/files/output", headers=as_user("bob"))
    assert names == ["public.png [output]"]
    _, names = await server.json("GET", "/internal/files/output", headers=as_user("root"))
    assert sorted(names) == ["private_a.png [output]", "public.png [output]"]
    # A mask composited onto someone else's image would hand it over: refused the same way.
    for user, expected in (("bob", 403), ("root", 400)):  # root passes the check; b"x" is no image
        form = aiohttp.FormData()
        form.add_field("image", b"mask", filename="mask.png", content_type="image/png")
        form.add_field("original_ref", json.dumps({"filename": "private_a.png", "type": "output"}))
        status, _ = await server.json("POST", "/upload/mask", data=form, headers=as_user(user))
        assert status == expected, user


async def test_messages_of_unknown_prompts_go_to_admins_and_promptless_ones_to_all(comfy_server):
    from kernel.events import ServerMessage

    server = await start(comfy_server)
    alice = await server.session.ws_connect(f"{server.url}/ws?clientId=a&test_user=alice")
    root = await server.session.ws_connect(f"{server.url}/ws?clientId=r&test_user=root")
    for ws in (alice, root):
        assert (await ws.receive_json(timeout=5))["type"] == "status"
    bus = server.kernel.bus
    bus.publish(ServerMessage(type="executing", data={"node": "1", "prompt_id": "ghost"}, broadcast=True))
    bus.publish(ServerMessage(type="monitor", data={"cpu": 1}, broadcast=True))
    got_alice = [f["type"] for f in await _frames(alice, 0.5)]
    got_root = [f["type"] for f in await _frames(root, 0.5)]
    assert got_alice == ["monitor"] and got_root == ["executing", "monitor"]


async def test_reconnect_replay_only_for_the_owner(comfy_server):
    server = await start(comfy_server)
    first = await server.session.ws_connect(f"{server.url}/ws?clientId=ca&test_user=alice")
    assert (await first.receive_json(timeout=5))["type"] == "status"
    prompt_id = await queue_slow(server, "alice", client_id="ca")
    await wait_running(server, prompt_id)
    await asyncio.sleep(0.3)
    await first.close()
    # Bob takes the now free clientId: he learns nothing about Alice's running prompt.
    bob = await server.session.ws_connect(f"{server.url}/ws?clientId=ca&test_user=bob")
    assert (await bob.receive_json(timeout=5))["data"]["sid"] == "ca"
    assert [f for f in await _frames(bob, 0.5) if isinstance(f, dict) and f["type"] == "executing"] == []
    await bob.close()
    alice = await server.session.ws_connect(f"{server.url}/ws?clientId=ca&test_user=alice")
    assert (await alice.receive_json(timeout=5))["type"] == "status"
    assert await alice.receive_json(timeout=5) == {"type": "executing", "data": {"node": "1"}}
    await alice.close()
