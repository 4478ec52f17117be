"""What an identity controls: users see and manage only their own prompts, userdata and outputs;
admins see and manage all. Through the real server with --auth password."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.plugins.auth.helpers import SLOW, add_user, bearer, new_token, save_prompt, start, wait_for


async def _setup(comfy_server: Any, tmp_path: Any, **extra: Any) -> tuple[Any, dict[str, dict[str, str]]]:
    add_user(tmp_path, "alice")
    add_user(tmp_path, "bob")
    add_user(tmp_path, "root", admin=True)
    heads = {name: bearer(new_token(tmp_path, name)) for name in ("alice", "bob", "root")}
    return await start(comfy_server, tmp_path, **extra), heads


async def _post_prompt(server: Any, headers: dict[str, str], prompt: dict[str, Any], **body: Any) -> str:
    status, answer = await server.json("POST", "/prompt", json={"prompt": prompt, **body}, headers=headers)
    assert status == 200, answer
    return answer["prompt_id"]


async def _ids(server: Any, headers: dict[str, str]) -> set[str]:
    _, body = await server.json("GET", "/queue", headers=headers)
    return {item[1] for item in body["queue_running"] + body["queue_pending"]}


async def test_prompts_history_and_jobs_are_per_user(comfy_server, tmp_path):
    server, h = await _setup(comfy_server, tmp_path)
    queue = server.kernel.queue
    a_done = await _post_prompt(server, h["alice"], save_prompt("a1"))
    await wait_for(lambda: not queue.is_pending(a_done) and not queue.is_running(a_done))
    a_run = await _post_prompt(server, h["alice"], SLOW)
    await wait_for(lambda: queue.is_running(a_run))
    # Bob claims to be Alice in the header and in the body: neither counts.
    alice_id = (await server.json("GET", "/auth/me", headers=h["alice"]))[1]["user"]
    spoof = {**h["bob"], "Comfy-User": alice_id}
    b_pending = await _post_prompt(server, spoof, SLOW, extra_data={"comfy_user": alice_id})
    a_pending = await _post_prompt(server, h["alice"], SLOW)

    assert await _ids(server, h["alice"]) == {a_run, a_pending}
    assert await _ids(server, spoof) == {b_pending}
    assert await _ids(server, h["root"]) == {a_run, a_pending, b_pending}
    for path in ("/history", "/api/history"):
        assert list((await server.json("GET", path, headers=h["alice"]))[1]) == [a_done]
        assert (await server.json("GET", path, headers=spoof))[1] == {}
        assert list((await server.json("GET", path, headers=h["root"]))[1]) == [a_done]
    assert (await server.json("GET", f"/history/{a_done}", headers=h["bob"]))[1] == {}
    _, jobs = await server.json("GET", "/api/jobs", headers=h["bob"])
    assert [j["id"] for j in jobs["jobs"]] == [b_pending]
    _, jobs = await server.json("GET", "/api/jobs", headers=h["root"])
    assert {j["id"] for j in jobs["jobs"]} == {a_done, a_run, a_pending, b_pending}
    assert (await server.json("GET", f"/api/jobs/{a_done}", headers=h["bob"]))[0] == 404

    # Bob can delete, clear, cancel and interrupt nothing of Alice's.
    for body in ({"delete": [a_pending]}, {"clear": True}):
        assert (await server.json("POST", "/queue", json=body, headers=h["bob"]))[0] == 200
    assert (await server.json("POST", f"/api/jobs/{a_pending}/cancel", headers=h["bob"]))[1] == {
        "cancelled": False
    }
    for body in ({}, {"prompt_id": a_run}):
        assert (await server.json("POST", "/interrupt", json=body, headers=h["bob"]))[0] == 200
    assert (await server.json("POST", "/history", json={"clear": True}, headers=h["bob"]))[0] == 200
    await asyncio.sleep(0.3)
    assert queue.is_running(a_run) and queue.is_pending(a_pending) and not queue.is_pending(b_pending)
    assert list((await server.json("GET", "/history", headers=h["alice"]))[1]) == [a_done]

    # Alice can; the admin can do it for anyone.
    assert (await server.json("POST", "/queue", json={"delete": [a_pending]}, headers=h["alice"]))[0] == 200
    assert not queue.is_pending(a_pending)
    b_again = await _post_prompt(server, h["bob"], SLOW)
    assert (await server.json("POST", "/queue", json={"clear": True}, headers=h["root"]))[0] == 200
    assert not queue.is_pending(b_again)
    assert (await server.json("POST", "/interrupt", json={"prompt_id": a_run}, headers=h["root"]))[0] == 200
    await wait_for(lambda: not queue.is_running(a_run))


async def test_userdata_and_settings_follow_the_identity(comfy_server, tmp_path):
    server, h = await _setup(comfy_server, tmp_path)
    alice_id = (await server.json("GET", "/auth/me", headers=h["alice"]))[1]["user"]
    async with server.post("/userdata/workflows%2Fmine.json", data=b'{"a": 1}', headers=h["alice"]) as resp:
        assert resp.status == 200
    assert (
        server.kernel.settings.user_path / alice_id / "workflows" / "mine.json"
    ).read_bytes() == b'{"a": 1}'
    async with server.get("/userdata/workflows%2Fmine.json", headers=h["alice"]) as resp:
        assert resp.status == 200
    # Bob, even naming Alice in Comfy-User, reads his own (empty) space.
    spoof = {**h["bob"], "Comfy-User": alice_id}
    async with server.get("/userdata/workflows%2Fmine.json", headers=spoof) as resp:
        assert resp.status == 404
    assert (await server.json("GET", "/userdata?dir=workflows", headers=spoof))[0] == 404
    assert (await server.json("POST", "/settings/Comfy.Theme", json="dark", headers=h["alice"]))[0] == 200
    assert (await server.json("GET", "/settings", headers=spoof))[1] == {}
    assert (await server.json("GET", "/settings", headers=h["alice"]))[1] == {"Comfy.Theme": "dark"}


async def test_outputs_are_readable_by_their_owner_and_admins(comfy_server, tmp_path):
    server, h = await _setup(comfy_server, tmp_path)
    queue = server.kernel.queue
    prompt_id = await _post_prompt(server, h["alice"], save_prompt("alice_out"))
    await wait_for(lambda: not queue.is_pending(prompt_id) and not queue.is_running(prompt_id))
    await asyncio.sleep(0.1)
    view = "/view?filename=alice_out.txt&type=output"
    async with server.get(view, headers=h["alice"]) as resp:
        assert resp.status == 200 and await resp.text() == "alice_out"
    assert (await server.json("GET", view, headers=h["bob"]))[0] == 403
    async with server.get(view, headers=h["root"]) as resp:
        assert resp.status == 200
    assert (await server.json("GET", "/internal/files/output", headers=h["bob"]))[1] == []
    assert (await server.json("GET", "/internal/files/output", headers=h["alice"]))[1] == [
        "alice_out.txt [output]"
    ]
    # A file nobody reported (dropped in by hand) is for admins only; inputs stay shared.
    (server.kernel.settings.output_path / "stray.txt").write_text("?")
    assert (await server.json("GET", "/view?filename=stray.txt", headers=h["alice"]))[0] == 403
    assert (await server.json("GET", "/view?filename=stray.txt", headers=h["root"]))[0] == 200
    (server.kernel.settings.input_path / "shared.txt").write_text("in")
    assert (await server.json("GET", "/view?filename=shared.txt&type=input", headers=h["bob"]))[0] == 200


async def test_shared_outputs_flag(comfy_server, tmp_path):
    server, h = await _setup(comfy_server, tmp_path, auth_shared_outputs=True)
    queue = server.kernel.queue
    prompt_id = await _post_prompt(server, h["alice"], save_prompt("shared_out"))
    await wait_for(lambda: not queue.is_pending(prompt_id) and not queue.is_running(prompt_id))
    async with server.get("/view?filename=shared_out.txt", headers=h["bob"]) as resp:
        assert resp.status == 200


async def _frames(ws: aiohttp.ClientWebSocketResponse, until: Any, timeout: float = 15.0) -> list[Any]:
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until(frames) and (left := deadline - loop.time()) > 0:
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


def _about(frames: list[Any], prompt_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if isinstance(f, dict) and (f.get("data") or {}).get("prompt_id") == prompt_id]


def _finished(prompt_id: str) -> Any:
    return lambda frames: any(
        f.get("type") == "executing" and f["data"].get("node") is None for f in _about(frames, prompt_id)
    )


async def test_websocket_messages_about_a_prompt_reach_its_owner_and_admins(comfy_server, tmp_path):
    server, h = await _setup(comfy_server, tmp_path)
    sockets = {}
    for name in ("alice", "bob", "root"):
        sockets[name] = await server.session.ws_connect(
            f"{server.url}/ws?clientId=ws-{name}", headers=h[name]
        )
        assert (await sockets[name].receive_json(timeout=5))["type"] == "status"
    # Bob reconnecting with Alice's clientId gets a fresh id, not her socket.
    thief = await server.session.ws_connect(f"{server.url}/ws?clientId=ws-alice", headers=h["bob"])
    assert (await thief.receive_json(timeout=5))["data"]["sid"] != "ws-alice"
    preview = {
        "1": {"class_type": "ExecSteps", "inputs": {"steps": 3, "delay": 0.01, "value": 1, "preview": True}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    # One prompt addressed to Alice's socket, one broadcast (no client_id).
    addressed = await _post_prompt(server, h["alice"], preview, client_id="ws-alice")
    alice = await _frames(sockets["alice"], _finished(addressed))
    broadcast = await _post_prompt(server, h["alice"], preview)
    alice += await _frames(sockets["alice"], _finished(broadcast))
    root = await _frames(sockets["root"], _finished(broadcast))
    bob = await _frames(sockets["bob"], lambda f: False, timeout=0.5)
    stolen = await _frames(thief, lambda f: False, timeout=0.5)
    assert _about(alice, addressed) and _about(alice, broadcast) and _about(root, broadcast)
    assert any(isinstance(f, bytes) for f in alice)
    assert (
        _about(bob, broadcast) == [] and _about(stolen, addressed) == [] and _about(stolen, broadcast) == []
    )
    assert not any(isinstance(f, bytes) for f in bob + stolen)
    for ws in (*sockets.values(), thief):
        await ws.close()


async def test_the_server_log_is_for_admins(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    add_user(tmp_path, "root", admin=True)
    alice, root = bearer(new_token(tmp_path, "alice")), bearer(new_token(tmp_path, "root"))
    server = await comfy_server(
        plugins=["userdata", "frontend_ext", "auth"], base_directory=tmp_path, extra={"auth": "password"}
    )
    assert (await server.json("GET", "/internal/logs/raw", headers=alice))[0] == 403
    assert (await server.json("GET", "/internal/logs/raw", headers=root))[0] == 200
