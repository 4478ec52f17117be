"""GET/POST /settings and /settings/{id}: per-user comfy.settings.json, merged atomically."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.plugins.userdata.helpers import raw, user_root


@pytest.fixture
async def server(comfy_server):
    return await comfy_server(plugins=["userdata"])


def settings_file(server):
    return user_root(server) / "comfy.settings.json"


async def test_empty_settings_and_unset_id_is_null(server):
    for prefix in ("", "/api"):
        assert await server.json("GET", prefix + "/settings") == (200, {})
        status, body, resp = await raw(server, "GET", prefix + "/settings/Comfy.ColorPalette")
        assert (status, body, resp.content_type) == (200, b"null", "application/json")
    assert not settings_file(server).exists()


async def test_post_settings_is_a_shallow_merge(server):
    status, body, _ = await raw(
        server, "POST", "/settings", data=json.dumps({"a": 1, "nested": {"x": 1, "y": 2}}).encode()
    )
    assert (status, body) == (200, b"")
    status, _ = await server.json("POST", "/api/settings", json={"b": 2, "nested": {"z": 3}})
    assert status == 200
    assert await server.json("GET", "/settings") == (200, {"a": 1, "b": 2, "nested": {"z": 3}})
    # Stored pretty-printed with a 4-space indent, like the reference.
    assert settings_file(server).read_text() == json.dumps({"a": 1, "nested": {"z": 3}, "b": 2}, indent=4)


@pytest.mark.parametrize("value", [None, 0, "dark", [1, 2], {"deep": {"er": True}}, 1.5, False])
async def test_post_setting_by_id_any_json_value(server, value):
    # aiohttp's json=None would send no body at all, so encode by hand.
    status, _ = await server.json("POST", "/settings/Comfy.Some.Setting", data=json.dumps(value).encode())
    assert status == 200
    assert await server.json("GET", "/settings/Comfy.Some.Setting") == (200, value)
    assert await server.json("GET", "/settings") == (200, {"Comfy.Some.Setting": value})


async def test_post_setting_id_with_encoded_characters(server):
    status, _, _ = await raw(server, "POST", "/settings/Comfy.Key%20With%2FSlash", data=b"7")
    assert status == 200
    assert await server.json("GET", "/settings") == (200, {"Comfy.Key With/Slash": 7})


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3", b"null"])
async def test_post_settings_non_object_is_400(server, body):
    status, answer, _ = await raw(server, "POST", "/settings", data=body)
    assert status == 400 and json.loads(answer) == {"error": "Settings must be a JSON object"}
    assert not settings_file(server).exists()


@pytest.mark.parametrize("path", ["/settings", "/settings/x"])
async def test_post_malformed_json_is_400_not_500(server, path):
    status, answer, _ = await raw(server, "POST", path, data=b"{not json")
    assert status == 400 and "error" in json.loads(answer)
    status, answer, _ = await raw(server, "POST", path, data=b"")
    assert status == 400


@pytest.mark.parametrize("content", [b"{corrupt", b"[1, 2, 3]", b"\xff\xfe"])
async def test_corrupt_settings_file_reads_as_empty_and_is_replaced(server, content):
    settings_file(server).parent.mkdir(parents=True)
    settings_file(server).write_bytes(content)
    assert await server.json("GET", "/settings") == (200, {})
    assert await server.json("GET", "/settings/a") == (200, None)
    status, _ = await server.json("POST", "/settings/a", json=1)
    assert status == 200
    assert json.loads(settings_file(server).read_text()) == {"a": 1}


async def test_fifty_parallel_posts_with_different_keys_all_kept(server):
    results = await asyncio.gather(*(server.json("POST", f"/settings/key{i}", json=i) for i in range(50)))
    assert [status for status, _ in results] == [200] * 50
    status, settings = await server.json("GET", "/settings")
    assert settings == {f"key{i}": i for i in range(50)}
    assert json.loads(settings_file(server).read_text()) == settings
    assert sorted(p.name for p in user_root(server).iterdir()) == ["comfy.settings.json"]


async def test_parallel_whole_object_posts_never_lose_keys(server):
    results = await asyncio.gather(
        *(server.json("POST", "/settings", json={f"a{i}": i, f"b{i}": -i}) for i in range(30)),
        *(server.json("POST", f"/settings/c{i}", json=[i]) for i in range(20)),
    )
    assert all(status == 200 for status, _ in results)
    status, settings = await server.json("GET", "/settings")
    assert len(settings) == 80
    assert settings["a29"] == 29 and settings["b0"] == 0 and settings["c19"] == [19]


async def test_settings_are_per_user_in_multi_user_mode(comfy_server):
    server = await comfy_server(plugins=["userdata"], multi_user=True)
    _, ann = await server.json("POST", "/users", json={"username": "ann"})
    _, bob = await server.json("POST", "/users", json={"username": "bob"})
    await asyncio.gather(
        *(server.json("POST", f"/settings/k{i}", json=i, headers={"Comfy-User": ann}) for i in range(10)),
        *(server.json("POST", f"/settings/k{i}", json=-i, headers={"Comfy-User": bob}) for i in range(10)),
    )
    assert await server.json("GET", "/settings", headers={"Comfy-User": ann}) == (
        200,
        {f"k{i}": i for i in range(10)},
    )
    assert await server.json("GET", "/settings/k3", headers={"Comfy-User": bob}) == (200, -3)
    status, body = await server.json("GET", "/settings", headers={"Comfy-User": "stranger"})
    assert (status, body) == (401, {"error": "Unknown user"})
