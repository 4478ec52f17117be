"""The plugin in the server: feature flag, execution outputs, multi-user ownership, kernel.assets."""

from __future__ import annotations

import asyncio
import time
import uuid

from kernel.events import PromptFinished
from kernel.queue import QueueItem
from plugins.assets.state import STATE
from tests.plugins.assets.helpers import PLUGINS, b3, form, png_bytes, upload


async def test_feature_flag_present_only_when_enabled(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    status, body = await server.json("GET", "/features")
    assert status == 200 and body["assets"] is True
    ws = await server.ws("c1")
    try:
        await ws.send_json({"type": "feature_flags", "data": {}})
        seen = None
        for _ in range(5):
            msg = await asyncio.wait_for(ws.receive_json(), 5)
            if msg.get("type") == "feature_flags":
                seen = msg["data"]
                break
        assert seen is not None and seen["assets"] is True
    finally:
        await ws.close()
    assert server.kernel.assets is not None


async def test_disabled_plugin_serves_nothing(comfy_server):
    server = await comfy_server(plugins=["models"])
    _, body = await server.json("GET", "/features")
    assert "assets" not in body
    assert server.kernel.assets is None
    for method, path in [
        ("GET", "/api/assets"),
        ("GET", "/api/tags"),
        ("POST", "/api/assets/seed"),
        ("GET", f"/api/assets/{uuid.uuid4()}"),
    ]:
        async with server.request(method, path) as resp:
            assert resp.status in (404, 405), path


def _finished(prompt_id, outputs, user=None):
    extra = {"comfy_user": user} if user else {}
    item = QueueItem(number=1, prompt_id=prompt_id, prompt={}, extra_data=extra, outputs_to_execute=[])
    status = {"status_str": "success", "completed": True, "messages": []}
    return PromptFinished(item=item, status=status, outputs=outputs, meta={})


async def _wait_for(server, query, count, headers=None, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        _, body = await server.json("GET", "/api/assets?" + query, headers=headers or {})
        if body["total"] >= count:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_execution_outputs_become_assets_with_prompt_id(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    out = server.kernel.settings.output_path
    (out / "sub").mkdir(parents=True, exist_ok=True)
    (out / "ComfyUI_00001_.png").write_bytes(png_bytes(1))
    (out / "sub" / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3video")
    (server.kernel.settings.temp_path).mkdir(parents=True, exist_ok=True)
    (server.kernel.settings.temp_path / "preview.png").write_bytes(png_bytes(2))
    prompt_id = str(uuid.uuid4())
    outputs = {
        "9": {
            "images": [
                {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
                {"filename": "preview.png", "subfolder": "", "type": "temp"},
                {"filename": "../escape.png", "subfolder": "", "type": "output"},
                {"filename": "absent.png", "subfolder": "", "type": "output"},
            ]
        },
        "10": {"gifs": [{"filename": "clip.webm", "subfolder": "sub", "type": "output"}], "text": ["hi"]},
    }
    server.kernel.bus.publish(_finished(prompt_id, outputs))
    body = await _wait_for(server, "include_tags=output&sort=name&order=asc", 2)
    assert body["total"] == 2
    png, webm = body["assets"]
    assert png["name"] == "ComfyUI_00001_.png" and png["prompt_id"] == prompt_id
    assert png["asset_hash"] == b3(png_bytes(1)) and png["mime_type"] == "image/png"
    assert png["metadata"] == {"type": "output", "subfolder": "", "filename": "ComfyUI_00001_.png"}
    assert webm["metadata"]["subfolder"] == "sub" and webm["mime_type"] == "video/webm"
    assert webm["prompt_id"] == prompt_id
    # A later seed of the output root finds them recorded already.
    status, _ = await server.json("POST", "/api/assets/seed", json={"roots": ["output"]})
    assert status == 200
    await asyncio.to_thread(server.kernel.stash[STATE].seeder.join, 20)
    _, progress = await server.json("GET", "/api/assets/seed/status")
    assert progress["status"] == "completed" and progress["created"] == 0 and progress["skipped"] == 2


async def test_multi_user_ownership(comfy_server):
    server = await comfy_server(plugins=PLUGINS, multi_user=True)
    alice = {"Comfy-User": "alice"}
    bob = {"Comfy-User": "bob"}
    data = png_bytes(3)
    status, mine = await server.json("POST", "/api/assets", data=form(data, "a.png"), headers=alice)
    assert status == 201
    _, listing = await server.json("GET", "/api/assets", headers=bob)
    assert listing["total"] == 0
    status, _ = await server.json("GET", f"/api/assets/{mine['id']}", headers=bob)
    assert status == 404
    status, _ = await server.json("DELETE", f"/api/assets/{mine['id']}", headers=bob)
    assert status == 404
    _, listing = await server.json("GET", "/api/assets", headers=alice)
    assert listing["total"] == 1
    _, tags = await server.json("GET", "/api/tags", headers=bob)
    assert tags["total"] == 0
    # Shared (seeded) records are visible to all and read-only to each user.
    (server.kernel.settings.input_path / "shared.txt").write_bytes(b"shared")
    await server.json("POST", "/api/assets/seed", json={"roots": ["input"]})
    await asyncio.to_thread(server.kernel.stash[STATE].seeder.join, 20)
    _, listing = await server.json("GET", "/api/assets?name_contains=shared", headers=bob)
    assert listing["total"] == 1
    shared_id = listing["assets"][0]["id"]
    status, body = await server.json("PUT", f"/api/assets/{shared_id}", json={"name": "mine"}, headers=bob)
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    status, body = await server.json(
        "POST", f"/api/assets/{shared_id}/tags", json={"tags": ["x"]}, headers=bob
    )
    assert status == 403
    # Outputs of a user's prompt belong to that user.
    out = server.kernel.settings.output_path
    out.mkdir(parents=True, exist_ok=True)
    (out / "bob.png").write_bytes(png_bytes(4))
    outputs = {"1": {"images": [{"filename": "bob.png", "subfolder": "", "type": "output"}]}}
    server.kernel.bus.publish(_finished(str(uuid.uuid4()), outputs, user="bob"))
    await _wait_for(server, "include_tags=output", 1, headers=bob)
    _, listing = await server.json("GET", "/api/assets?include_tags=output", headers=alice)
    assert listing["total"] == 0


async def test_kernel_assets_api_resolves_hashes_and_registers_uploads(comfy_server):
    server = await comfy_server(plugins=PLUGINS, multi_user=True)
    api = server.kernel.assets
    data = png_bytes(5)
    _, created = await server.json(
        "POST", "/api/assets", data=form(data, "a.png"), headers={"Comfy-User": "alice"}
    )
    found = api.resolve_hash(created["asset_hash"], "alice")
    assert found is not None
    path, mime_type, name = found
    assert path.read_bytes() == data and mime_type == "image/png" and name == "a.png"
    assert api.resolve_hash(created["asset_hash"], "bob") is None
    assert api.resolve_hash("blake3:" + "0" * 64, "alice") is None
    assert api.resolve_hash("nonsense", "alice") is None
    target = server.kernel.settings.input_path / "up" / "x.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(png_bytes(6))
    info = await asyncio.to_thread(api.register_upload, target, "input", "bob")
    assert set(info) == {"id", "name", "asset_hash", "size", "mime_type", "tags"}
    assert info["name"] == "x.png" and info["tags"] == ["input"] and info["asset_hash"] == b3(png_bytes(6))
    _, fetched = await server.json("GET", f"/api/assets/{info['id']}", headers={"Comfy-User": "bob"})
    assert fetched["metadata"] == {"type": "input", "subfolder": "up", "filename": "x.png"}
    # Registering the same path again refreshes the record instead of adding one.
    target.write_bytes(png_bytes(7))
    again = await asyncio.to_thread(api.register_upload, target, "input", "bob")
    assert again["id"] == info["id"] and again["asset_hash"] == b3(png_bytes(7))


async def test_store_survives_restart(comfy_server, tmp_path):
    server = await comfy_server(plugins=PLUGINS)
    _, created = await upload(server, b"persist me", "p.bin", tags="keep")
    await server.stop()
    again = await comfy_server(plugins=PLUGINS)
    status, body = await again.json("GET", f"/api/assets/{created['id']}")
    assert status == 200 and body["tags"] == ["input", "keep"]
    assert (tmp_path / "user" / "comfykernel_assets.db").is_file()
