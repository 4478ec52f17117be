"""--multi-user: history and jobs are per Comfy-User (POST /prompt files it in extra_data)."""

from __future__ import annotations

from tests.plugins.history.helpers import finish, make_item, queue, start_quiet

ALICE = {"Comfy-User": "alice"}
BOB = {"Comfy-User": "bob"}


async def test_history_and_jobs_are_per_user(comfy_server):
    server = await start_quiet(comfy_server, multi_user=True)
    k = server.kernel
    a = finish(k, make_item(0, user="alice"))
    b = finish(k, make_item(1, user="bob"))
    pa = queue(k, make_item(2, user="alice"))
    _, body = await server.json("GET", "/history", headers=ALICE)
    assert list(body) == [a.prompt_id]
    assert await server.json("GET", f"/history/{b.prompt_id}", headers=ALICE) == (200, {})
    _, body = await server.json("GET", "/api/jobs", headers=ALICE)
    assert [j["id"] for j in body["jobs"]] == [pa.prompt_id, a.prompt_id]
    _, body = await server.json("GET", "/api/jobs", headers=BOB)
    assert [j["id"] for j in body["jobs"]] == [b.prompt_id]
    assert (await server.json("GET", f"/api/jobs/{a.prompt_id}", headers=BOB))[0] == 404
    # Bob can neither cancel nor delete Alice's prompts.
    status, body = await server.json("POST", f"/api/jobs/{pa.prompt_id}/cancel", headers=BOB)
    assert body == {"cancelled": False} and k.queue.is_pending(pa.prompt_id)
    async with server.post("/history", json={"clear": True}, headers=BOB) as resp:
        assert resp.status == 200
    _, body = await server.json("GET", "/history", headers=ALICE)
    assert list(body) == [a.prompt_id]
    assert await server.json("GET", "/history", headers=BOB) == (200, {})


async def test_no_header_is_the_default_user(comfy_server):
    server = await start_quiet(comfy_server, multi_user=True)
    anon = finish(server.kernel, make_item(0))
    finish(server.kernel, make_item(1, user="alice"))
    _, body = await server.json("GET", "/history")
    assert list(body) == [anon.prompt_id]


async def test_single_user_servers_show_everything(comfy_server):
    server = await start_quiet(comfy_server)
    finish(server.kernel, make_item(0, user="alice"))
    finish(server.kernel, make_item(1, user="bob"))
    _, body = await server.json("GET", "/history", headers=ALICE)
    assert len(body) == 2
