"""GET/POST /history over real HTTP, fed by the lifecycle events the engine publishes."""

from __future__ import annotations

import sqlite3

import pytest

from kernel import StartupError
from plugins.history.store import DB_NAME
from tests.plugins.history.helpers import IMAGE_OUTPUTS, finish, make_item, queue, start_quiet


async def test_empty_history_is_an_empty_object(comfy_server):
    server = await start_quiet(comfy_server)
    for path in ("/history", "/api/history"):
        assert await server.json("GET", path) == (200, {})


async def test_entry_shape_matches_the_reference(comfy_server):
    server = await start_quiet(comfy_server)
    item = finish(server.kernel, make_item(3, create_time=111))
    status, body = await server.json("GET", "/history")
    assert status == 200
    entry = body[item.prompt_id]
    assert entry["prompt"] == [3, item.prompt_id, item.prompt, {"create_time": 111}, ["1"]]
    assert entry["outputs"] == IMAGE_OUTPUTS
    assert entry["status"]["status_str"] == "success"
    assert entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["meta"]["1"]["display_node"] == "1"
    assert set(entry) == {"prompt", "outputs", "status", "meta"}


async def test_float_number_survives_storage(comfy_server):
    server = await start_quiet(comfy_server)
    item = finish(server.kernel, make_item(2.0))
    _, body = await server.json("GET", f"/history/{item.prompt_id}")
    assert isinstance(body[item.prompt_id]["prompt"][0], float)


async def test_pending_prompts_are_not_history(comfy_server):
    server = await start_quiet(comfy_server)
    item = queue(server.kernel, make_item(0))
    assert await server.json("GET", "/history") == (200, {})
    assert await server.json("GET", f"/history/{item.prompt_id}") == (200, {})


async def test_order_is_oldest_first_and_max_items_takes_the_newest(comfy_server):
    server = await start_quiet(comfy_server)
    ids = [finish(server.kernel, make_item(i)).prompt_id for i in range(5)]
    _, body = await server.json("GET", "/history")
    assert list(body) == ids
    _, body = await server.json("GET", "/history?max_items=2")
    assert list(body) == ids[3:]
    _, body = await server.json("GET", "/history?offset=1&max_items=2")
    assert list(body) == ids[1:3]
    _, body = await server.json("GET", "/history?offset=3")
    assert list(body) == ids[3:]
    _, body = await server.json("GET", "/history?offset=-1&max_items=1")
    assert list(body) == ids[4:]
    _, body = await server.json("GET", "/api/history?max_items=10")
    assert list(body) == ids
    assert await server.json("GET", "/history?max_items=0") == (200, {})


async def test_non_integer_query_values_are_400(comfy_server):
    server = await start_quiet(comfy_server)
    assert await server.json("GET", "/history?max_items=ten") == (
        400,
        {"error": "max_items must be an integer"},
    )
    assert await server.json("GET", "/history?offset=1.5") == (400, {"error": "offset must be an integer"})


async def test_single_entry_and_unknown_id(comfy_server):
    server = await start_quiet(comfy_server)
    item = finish(server.kernel, make_item(0))
    status, body = await server.json("GET", f"/history/{item.prompt_id}")
    assert status == 200 and list(body) == [item.prompt_id]
    assert await server.json("GET", "/api/history/not-a-prompt") == (200, {})


async def test_post_history_delete_and_clear(comfy_server):
    server = await start_quiet(comfy_server)
    ids = [finish(server.kernel, make_item(i)).prompt_id for i in range(3)]
    async with server.post("/history", json={"delete": [ids[1], "unknown"]}) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    _, body = await server.json("GET", "/history")
    assert list(body) == [ids[0], ids[2]]
    async with server.post("/api/history", json={"clear": True}) as resp:
        assert resp.status == 200
    assert await server.json("GET", "/history") == (200, {})


async def test_post_history_bad_bodies_are_400(comfy_server):
    server = await start_quiet(comfy_server)
    status, body = await server.json(
        "POST", "/history", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body == {"error": "Request body must be valid JSON"}
    status, body = await server.json("POST", "/history", json={"delete": "abc"})
    assert status == 400 and body == {"error": "delete must be a list"}
    status, body = await server.json("POST", "/history", json=[1, 2])
    assert status == 400 and "error" in body


async def test_history_is_bounded_oldest_evicted(comfy_server):
    server = await start_quiet(comfy_server, extra={"history_max_items": 3})
    ids = [finish(server.kernel, make_item(i)).prompt_id for i in range(5)]
    _, body = await server.json("GET", "/history")
    assert list(body) == ids[2:]
    # Kept entries keep their outputs.
    assert all(entry["outputs"] == IMAGE_OUTPUTS for entry in body.values())


async def test_sensitive_values_never_reach_the_database(comfy_server, tmp_path):
    server = await start_quiet(comfy_server)
    secret = "sk-very-secret-token-123"
    finish(server.kernel, make_item(0, sensitive={"api_key_comfy_org": secret}))
    queue(server.kernel, make_item(1, sensitive={"api_key_comfy_org": secret}))
    db_path = server.kernel.settings.user_path / DB_NAME
    conn = sqlite3.connect(db_path)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert secret not in dump
    _, body = await server.json("GET", "/history")
    assert secret not in str(body)


async def test_database_lives_in_the_user_directory_in_wal_mode(comfy_server, tmp_path):
    user_dir = tmp_path / "elsewhere" / "users"
    server = await start_quiet(comfy_server, user_directory=str(user_dir))
    finish(server.kernel, make_item(0))
    db_path = user_dir / DB_NAME
    assert db_path.is_file()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_unusable_database_is_a_startup_error(comfy_server, tmp_path):
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / DB_NAME).write_bytes(b"this is not a sqlite database, not at all" * 100)
    with pytest.raises(StartupError, match="history: cannot open the database"):
        await comfy_server(plugins=["history"])
