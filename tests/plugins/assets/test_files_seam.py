"""The kernel's file routes with the assets plugin: /view?filename=blake3:... and the upload's asset."""

from __future__ import annotations

import aiohttp

from tests.plugins.assets.helpers import PLUGINS, b3, form, png_bytes, upload


def _image_form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        fd.add_field(key, value)
    return fd


async def test_upload_image_answer_carries_the_asset(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(1)
    status, body = await server.json(
        "POST", "/upload/image", data=_image_form(data, "cat.png", subfolder="pets")
    )
    assert status == 200
    assert body["name"] == "cat.png" and body["subfolder"] == "pets" and body["type"] == "input"
    asset = body["asset"]
    assert set(asset) == {"id", "name", "asset_hash", "size", "mime_type", "tags"}
    assert asset["asset_hash"] == b3(data) and asset["size"] == len(data)
    assert asset["mime_type"] == "image/png" and asset["tags"] == ["input"] and asset["name"] == "cat.png"
    status, fetched = await server.json("GET", f"/api/assets/{asset['id']}")
    assert status == 200
    assert fetched["metadata"] == {"type": "input", "subfolder": "pets", "filename": "cat.png"}
    # Overwriting the same name refreshes the same record.
    newer = png_bytes(2)
    status, body = await server.json(
        "POST", "/upload/image", data=_image_form(newer, "cat.png", subfolder="pets", overwrite="true")
    )
    assert body["asset"]["id"] == asset["id"] and body["asset"]["asset_hash"] == b3(newer)


async def test_upload_image_without_assets_has_no_asset(comfy_server):
    server = await comfy_server(plugins=["models"])
    status, body = await server.json("POST", "/upload/image", data=_image_form(png_bytes(3), "x.png"))
    assert status == 200 and "asset" not in body


async def test_view_resolves_blake3_hashes(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(4)
    _, created = await upload(server, data, "o.png", name="original name.png")
    async with server.get("/view", params={"filename": created["asset_hash"]}) as resp:
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"] == 'filename="original name.png"'
    async with server.get("/api/view", params={"filename": created["asset_hash"], "channel": "rgb"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    async with server.get("/view", params={"filename": b3(b"unknown")}) as resp:
        assert resp.status == 404
    async with server.get("/view", params={"filename": "blake3:zz"}) as resp:
        assert resp.status == 404


async def test_view_hash_respects_owner_and_stored_type(comfy_server):
    server = await comfy_server(plugins=PLUGINS, multi_user=True)
    alice = {"Comfy-User": "alice"}
    _, created = await server.json(
        "POST",
        "/api/assets",
        data=form(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "pic.svg"),
        headers=alice,
    )
    assert created["mime_type"] == "image/svg+xml"
    async with server.get("/view", params={"filename": created["asset_hash"]}, headers=alice) as resp:
        assert resp.status == 200
        # Dangerous stored types keep the /view safety rules.
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment;")
    async with server.get(
        "/view", params={"filename": created["asset_hash"]}, headers={"Comfy-User": "bob"}
    ) as resp:
        assert resp.status == 404


async def test_view_hash_without_assets_plugin_is_404(comfy_server):
    server = await comfy_server(plugins=["models"])
    async with server.get("/view", params={"filename": b3(b"x")}) as resp:
        assert resp.status == 404
