"""GET/POST /users, the Comfy-User header and the users map, over real HTTP."""

from __future__ import annotations

import json
import re

import pytest

from kernel import StartupError
from tests.plugins.userdata.helpers import raw, user_root

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


async def test_single_user_get_users_reports_migration(comfy_server):
    server = await comfy_server(plugins=["userdata"])
    for prefix in ("", "/api"):
        status, body = await server.json("GET", prefix + "/users")
        assert (status, body) == (200, {"storage": "server", "migrated": False})
    status, _ = await server.json("POST", "/settings/Comfy.Theme", json="dark")
    assert status == 200
    status, body = await server.json("GET", "/users")
    assert body == {"storage": "server", "migrated": True}


async def test_single_user_ignores_comfy_user_header(comfy_server):
    server = await comfy_server(plugins=["userdata"])
    status, _ = await server.json("POST", "/settings/a", json=1, headers={"Comfy-User": "someone"})
    assert status == 200
    assert (user_root(server) / "comfy.settings.json").is_file()
    assert not (server.kernel.settings.user_path / "someone").exists()


async def test_post_users_creates_sanitised_id_and_persists(comfy_server):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, user_id = await server.json("POST", "/users", json={"username": "  Ann Lee!?/x  "})
    assert status == 200
    assert re.fullmatch(rf"Ann-Lee-x_{UUID}", user_id), user_id
    users_file = server.kernel.settings.user_path / "users.json"
    assert json.loads(users_file.read_text()) == {user_id: "Ann Lee!?/x"}
    status, body = await server.json("GET", "/api/users")
    assert (status, body) == (200, {"storage": "server", "users": {user_id: "Ann Lee!?/x"}})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": ""}, "username not provided"),
        ({"username": "   "}, "username not provided"),
        ({}, "username not provided"),
        ({"username": 5}, "username not provided"),
        (["username"], "username not provided"),
        ({"username": "__system"}, "System User prefix not allowed"),
        ({"username": "  __x"}, "System User prefix not allowed"),
        ({"username": "n" * 201}, "username longer than 200 characters"),
    ],
)
async def test_post_users_refuses_bad_names(comfy_server, body, message):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, answer = await server.json("POST", "/users", json=body)
    assert (status, answer) == (400, {"error": message})
    assert not (server.kernel.settings.user_path / "users.json").exists()


async def test_post_users_duplicate_name(comfy_server):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, _ = await server.json("POST", "/users", json={"username": "bob"})
    assert status == 200
    for name in ("bob", " bob "):
        status, answer = await server.json("POST", "/users", json={"username": name})
        assert (status, answer) == (400, {"error": "Duplicate username."})
    status, body = await server.json("GET", "/users")
    assert list(body["users"].values()) == ["bob"]


async def test_post_users_malformed_json_is_400(comfy_server):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, body = await server.json(
        "POST", "/users", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert "error" in body


async def test_post_users_concurrent_creations_all_persisted(comfy_server):
    import asyncio

    server = await comfy_server(plugins=["userdata"], multi_user=True)
    results = await asyncio.gather(
        *(server.json("POST", "/users", json={"username": f"user{i}"}) for i in range(20))
    )
    assert all(status == 200 for status, _ in results)
    stored = json.loads((server.kernel.settings.user_path / "users.json").read_text())
    assert sorted(stored.values()) == sorted(f"user{i}" for i in range(20))


async def test_post_users_works_in_single_user_mode(comfy_server):
    server = await comfy_server(plugins=["userdata"])
    status, user_id = await server.json("POST", "/users", json={"username": "solo"})
    assert status == 200 and user_id.startswith("solo_")
    stored = json.loads((server.kernel.settings.user_path / "users.json").read_text())
    assert stored == {"default": "default", user_id: "solo"}
    status, answer = await server.json("POST", "/users", json={"username": "default"})
    assert (status, answer) == (400, {"error": "Duplicate username."})


async def test_multi_user_header_selects_user_and_isolates_files(comfy_server):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    _, ann = await server.json("POST", "/users", json={"username": "ann"})
    _, bob = await server.json("POST", "/users", json={"username": "bob"})
    status, _, _ = await raw(
        server, "POST", "/userdata/notes.txt", data=b"ann's", headers={"Comfy-User": ann}
    )
    assert status == 200
    assert (user_root(server, ann) / "notes.txt").read_bytes() == b"ann's"

    status, body, _ = await raw(server, "GET", "/userdata/notes.txt", headers={"Comfy-User": ann})
    assert (status, body) == (200, b"ann's")
    status, _, _ = await raw(server, "GET", "/userdata/notes.txt", headers={"Comfy-User": bob})
    assert status == 404
    # Reaching into a neighbour's folder by name is a path escape.
    status, body, _ = await raw(
        server, "GET", f"/userdata/..%2F{ann}%2Fnotes.txt", headers={"Comfy-User": bob}
    )
    assert status == 403 and b"ann's" not in body
    status, body, _ = await raw(
        server, "GET", f"/userdata/..%252F{ann}%252Fnotes.txt", headers={"Comfy-User": bob}
    )
    assert status == 403 and b"ann's" not in body
    status, body = await server.json("GET", f"/v2/userdata?path=..%2F{ann}", headers={"Comfy-User": bob})
    assert status == 400

    status, _ = await server.json("POST", "/settings/k", json="bob", headers={"Comfy-User": bob})
    assert status == 200
    status, value = await server.json("GET", "/settings/k", headers={"Comfy-User": ann})
    assert (status, value) == (200, None)


@pytest.mark.parametrize(
    "headers", [{}, {"Comfy-User": "nobody"}, {"Comfy-User": ""}, {"Comfy-User": "__system"}]
)
async def test_multi_user_missing_or_unknown_user_is_4xx(comfy_server, headers):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    user_path = server.kernel.settings.user_path
    user_path.mkdir(parents=True, exist_ok=True)
    if headers.get("Comfy-User") == "__system":
        # Even a system user written into users.json is unreachable over HTTP.
        (user_path / "users.json").write_text(json.dumps({"__system": "__system"}))
    for method, path, status_wanted in [
        ("GET", "/settings", 401),
        ("GET", "/settings/x", 401),
        ("POST", "/settings", 401),
        ("POST", "/settings/x", 401),
        ("GET", "/userdata?dir=workflows", 403),
        ("GET", "/v2/userdata", 403),
        ("GET", "/userdata/a.json", 403),
        ("POST", "/userdata/a.json", 403),
        ("DELETE", "/userdata/a.json", 403),
        ("POST", "/userdata/a.json/move/b.json", 403),
    ]:
        status, body, resp = await raw(server, method, path, data=b"{}", headers=headers)
        assert status == status_wanted, (method, path, status, body)
        assert b"Unknown user" in body
    assert sorted(p.name for p in user_path.iterdir()) == (
        ["users.json"] if headers.get("Comfy-User") == "__system" else []
    )


async def test_multi_user_users_json_loaded_at_start(comfy_server, tmp_path):
    user_path = tmp_path / "user"
    user_path.mkdir()
    (user_path / "users.json").write_text(json.dumps({"ann_1": "ann", "__sys": "sys"}))
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, body = await server.json("GET", "/users")
    assert body["users"]["ann_1"] == "ann"
    status, _ = await server.json("POST", "/settings/x", json=1, headers={"Comfy-User": "ann_1"})
    assert status == 200
    status, _ = await server.json("POST", "/settings/x", json=1, headers={"Comfy-User": "__sys"})
    assert status == 401
    # Default is not a user in multi-user mode unless created.
    status, _ = await server.json("GET", "/settings")
    assert status == 401


@pytest.mark.parametrize("content", ["{broken", "[1, 2]", '{"a": 1}'])
def test_multi_user_bad_users_json_refuses_to_start(make_kernel, tmp_path, content):
    user_path = tmp_path / "user"
    user_path.mkdir()
    (user_path / "users.json").write_text(content)
    with pytest.raises(StartupError, match="users.json"):
        make_kernel(plugins=["userdata"], multi_user=True)


async def test_user_id_escaping_user_dir_is_refused(comfy_server, tmp_path):
    user_path = tmp_path / "user"
    user_path.mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "comfy.settings.json").write_text('{"secret": 1}')
    (user_path / "users.json").write_text(json.dumps({"../victim": "evil"}))
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    status, body = await server.json("GET", "/settings", headers={"Comfy-User": "../victim"})
    assert status == 403 and "secret" not in json.dumps(body)
    status, _, _ = await raw(
        server, "POST", "/userdata/x.txt", data=b"x", headers={"Comfy-User": "../victim"}
    )
    assert status == 403
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == ["comfy.settings.json"]
