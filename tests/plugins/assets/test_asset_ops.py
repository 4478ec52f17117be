"""GET / PUT / DELETE /api/assets/{id}, its content download and its tags."""

from __future__ import annotations

import uuid

from tests.plugins.assets.helpers import PLUGINS, b3, png_bytes, upload

MISSING_ID = "00000000-0000-4000-8000-000000000000"


async def test_get_asset(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, png_bytes(1), "a.png", tags="x")
    status, body = await server.json("GET", f"/api/assets/{created['id']}")
    assert status == 200
    assert body["id"] == created["id"] and body["tags"] == ["input", "x"]
    assert "created_new" not in body
    status, body = await server.json("GET", f"/api/assets/{MISSING_ID}")
    assert status == 404 and body["error"]["code"] == "ASSET_NOT_FOUND"
    status, body = await server.json("GET", "/api/assets/not-a-uuid")
    assert status == 400 and body["error"]["code"] == "INVALID_ID"


async def test_update_asset(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"abc", "a.txt")
    _, preview = await upload(server, png_bytes(2), "p.png")
    status, body = await server.json(
        "PUT",
        f"/api/assets/{created['id']}",
        json={"name": "renamed.txt", "user_metadata": {"rating": 5}, "preview_id": preview["id"]},
    )
    assert status == 200
    assert body["id"] == created["id"]
    assert body["name"] == "renamed.txt"
    assert body["user_metadata"] == {"rating": 5}
    assert body["asset_hash"] == created["asset_hash"]
    assert body["tags"] == ["input"] and body["mime_type"] == "text/plain"
    assert body["updated_at"] >= created["updated_at"]
    _, fetched = await server.json("GET", f"/api/assets/{created['id']}")
    assert fetched["preview_id"] == preview["id"] and fetched["name"] == "renamed.txt"
    # Clearing the preview.
    status, _ = await server.json("PUT", f"/api/assets/{created['id']}", json={"preview_id": None})
    assert status == 200
    _, fetched = await server.json("GET", f"/api/assets/{created['id']}")
    assert "preview_id" not in fetched


async def test_update_errors(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"abc", "a.txt")
    url = f"/api/assets/{created['id']}"
    for body, code in [
        ({}, "INVALID_BODY"),
        ({"unrelated": 1}, "INVALID_BODY"),
        ({"name": ""}, "INVALID_BODY"),
        ({"user_metadata": "nope"}, "INVALID_JSON"),
        ({"preview_id": "zzz"}, "INVALID_ID"),
        ({"preview_id": created["id"]}, "INVALID_PREVIEW"),
    ]:
        status, answer = await server.json("PUT", url, json=body)
        assert status == 400, body
        assert answer["error"]["code"] == code, body
    status, answer = await server.json("PUT", url, data=b"{broken")
    assert status == 400 and answer["error"]["code"] == "INVALID_JSON"
    status, answer = await server.json("PUT", f"/api/assets/{MISSING_ID}", json={"name": "x"})
    assert status == 404
    status, answer = await server.json("PUT", "/api/assets/123", json={"name": "x"})
    assert status == 400 and answer["error"]["code"] == "INVALID_ID"


async def test_delete_keeps_shared_content_and_removes_last_copy(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(3)
    _, first = await upload(server, data, "a.png")
    _, second = await server.json("POST", "/api/assets/from-hash", json={"hash": b3(data), "name": "b.png"})
    stored = server.kernel.settings.input_path / (b3(data).split(":")[1] + ".png")
    async with server.delete(f"/api/assets/{first['id']}") as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    # The other reference still needs the bytes, so the file stays and is served.
    assert stored.is_file()
    async with server.get(f"/api/assets/{second['id']}/content") as resp:
        assert resp.status == 200 and await resp.read() == data
    status, _ = await server.json("GET", f"/api/assets/{first['id']}")
    assert status == 404
    async with server.delete(f"/api/assets/{second['id']}?delete_content=true") as resp:
        assert resp.status == 204
    assert not stored.exists()
    async with server.request("HEAD", f"/api/assets/hash/{b3(data)}") as resp:
        assert resp.status == 404


async def test_delete_without_content_keeps_file(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(4)
    _, created = await upload(server, data, "a.png")
    stored = server.kernel.settings.input_path / (b3(data).split(":")[1] + ".png")
    async with server.delete(f"/api/assets/{created['id']}?delete_content=false") as resp:
        assert resp.status == 204
    assert stored.read_bytes() == data
    status, body = await server.json("DELETE", f"/api/assets/{created['id']}")
    assert status == 404
    _, other = await upload(server, b"z", "z.bin")
    status, body = await server.json("DELETE", f"/api/assets/{other['id']}?delete_content=maybe")
    assert status == 400 and body["error"]["code"] == "INVALID_QUERY"
    status, body = await server.json("DELETE", "/api/assets/nope")
    assert status == 400 and body["error"]["code"] == "INVALID_ID"


async def test_content_download_disposition_and_ranges(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = bytes(range(256)) * 40
    _, created = await upload(server, data, "w.bin", name='we"ird name.bin')
    url = f"/api/assets/{created['id']}/content"
    async with server.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="we\\"ird name.bin"'
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers.get("Accept-Ranges") == "bytes"
    async with server.get(url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == data[10:20]
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    async with server.get(url, headers={"Range": f"bytes={len(data) + 5}-"}) as resp:
        assert resp.status == 416
    _, image = await upload(server, png_bytes(5), "pic.png")
    async with server.get(f"/api/assets/{image['id']}/content?disposition=inline") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"] == 'filename="pic.png"'


async def test_content_of_dangerous_type_is_never_inline(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"<script>alert(1)</script>", "x.html")
    assert created["mime_type"] == "text/html"
    async with server.get(f"/api/assets/{created['id']}/content?disposition=inline") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert resp.headers["Cache-Control"] == "no-store"


async def test_content_updates_last_access_and_404s(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = b"bytes"
    _, created = await upload(server, data, "a.bin")
    async with server.get(f"/api/assets/{created['id']}/content") as resp:
        assert resp.status == 200
    _, after = await server.json("GET", f"/api/assets/{created['id']}")
    assert after["last_access_time"] > created["last_access_time"]
    async with server.get(f"/api/assets/{MISSING_ID}/content") as resp:
        assert resp.status == 404
    async with server.get("/api/assets/bad/content") as resp:
        assert resp.status == 400
    (server.kernel.settings.input_path / (b3(data).split(":")[1] + ".bin")).unlink()
    status, body = await server.json("GET", f"/api/assets/{created['id']}/content")
    assert status == 404 and body["error"]["code"] == "CONTENT_MISSING"


async def test_add_and_remove_tags(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"t", "t.bin", tags="one")
    url = f"/api/assets/{created['id']}/tags"
    status, body = await server.json("POST", url, json={"tags": ["Two", "one", "three", "two"]})
    assert status == 200
    assert body == {
        "added": ["two", "three"],
        "already_present": ["one"],
        "total_tags": ["input", "one", "two", "three"],
    }
    status, body = await server.json("DELETE", url, json={"tags": ["one", "nine"]})
    assert status == 200
    assert body == {"removed": ["one"], "not_present": ["nine"], "total_tags": ["input", "two", "three"]}
    _, fetched = await server.json("GET", f"/api/assets/{created['id']}")
    assert fetched["tags"] == ["input", "two", "three"]


async def test_tag_errors(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"t", "t.bin")
    url = f"/api/assets/{created['id']}/tags"
    for method in ("POST", "DELETE"):
        for body, code in [
            ({"tags": []}, "INVALID_TAGS"),
            ({"tags": "a"}, "INVALID_TAGS"),
            ({"tags": [1]}, "INVALID_TAGS"),
            ({"tags": ["  "]}, "INVALID_TAGS"),
            ({"tags": ["a,b"]}, "INVALID_TAGS"),
            ({}, "INVALID_TAGS"),
            ({"tags": ["missing"]}, "PROTECTED_TAG"),
        ]:
            status, answer = await server.json(method, url, json=body)
            assert status == 400, (method, body)
            assert answer["error"]["code"] == code, (method, body)
        status, answer = await server.json(method, url, data=b"not json")
        assert status == 400 and answer["error"]["code"] == "INVALID_JSON"
        status, answer = await server.json(method, f"/api/assets/{uuid.uuid4()}/tags", json={"tags": ["a"]})
        assert status == 404
