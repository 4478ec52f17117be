"""POST /api/assets (multipart), POST /api/assets/from-hash, HEAD /api/assets/hash/{hash}."""

from __future__ import annotations

import os

from tests.plugins.assets.helpers import PLUGINS, b3, form, png_bytes, upload


async def test_upload_stores_hashes_and_detects_type(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(1)
    status, body = await upload(server, data, "cat.png", tags="Pets, cute", user_metadata='{"k": 1}')
    assert status == 201
    assert body["created_new"] is True
    assert body["name"] == "cat.png"
    assert body["asset_hash"] == b3(data)
    assert body["size"] == len(data)
    assert body["mime_type"] == "image/png"
    assert body["tags"] == ["input", "pets", "cute"]
    assert body["user_metadata"] == {"k": 1}
    assert body["is_immutable"] is False
    for key in ("created_at", "updated_at", "last_access_time"):
        assert body[key].startswith("20")
    # Stored under the input root as <hex>.png, nowhere else.
    stored = server.kernel.settings.input_path / (b3(data).split(":")[1] + ".png")
    assert stored.read_bytes() == data
    assert body["metadata"] == {"type": "input", "subfolder": "", "filename": stored.name}
    leftovers = [n for n in os.listdir(server.kernel.settings.user_path) if n.startswith(".assets-upload")]
    assert leftovers == []


async def test_upload_sniffs_content_over_extension_and_honours_override(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    status, body = await upload(server, png_bytes(2), "really-a-png.jpg")
    assert status == 201 and body["mime_type"] == "image/png"
    status, body = await upload(server, b"hello", "notes.txt")
    assert status == 201 and body["mime_type"] == "text/plain"
    status, body = await upload(server, b"\x00\x01", "blob")
    assert status == 201 and body["mime_type"] == "application/octet-stream"
    status, body = await upload(server, b"plain", "x.bin", mime_type="Application/X-Custom")
    assert status == 201 and body["mime_type"] == "application/x-custom"


async def test_upload_with_correct_and_wrong_hash(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(3)
    status, body = await upload(server, data, "a.png", hash=b3(data).upper().replace("BLAKE3", "blake3"))
    assert status == 201 and body["asset_hash"] == b3(data)
    status, body = await upload(server, data, "b.png", hash=b3(b"other"))
    assert status == 400
    assert body["error"]["code"] == "HASH_MISMATCH"
    status, body = await upload(server, data, "c.png", hash="sha256:abc")
    assert status == 400 and body["error"]["code"] == "INVALID_HASH"


async def test_same_content_same_name_returns_existing(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(4)
    _, first = await upload(server, data, "a.png")
    status, again = await upload(server, data, "a.png")
    assert status == 200
    assert again["created_new"] is False and again["id"] == first["id"]
    # Same bytes under another name: a new record sharing the stored file.
    status, other = await upload(server, data, "b.png")
    assert status == 201 and other["created_new"] is True and other["id"] != first["id"]
    assert other["asset_hash"] == first["asset_hash"]
    files = [p for p in server.kernel.settings.input_path.iterdir() if p.is_file()]
    assert len(files) == 1


async def test_upload_preview_id(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    _, preview = await upload(server, png_bytes(5), "thumb.png")
    status, body = await upload(server, b"model bytes", "m.bin", preview_id=preview["id"])
    assert status == 201
    assert body["preview_id"] == preview["id"]
    assert body["preview_url"] == f"/api/assets/{preview['id']}/content"
    status, body = await upload(server, b"model bytes", "n.bin", preview_id="not-a-uuid")
    assert status == 400 and body["error"]["code"] == "INVALID_ID"
    status, body = await upload(
        server, b"model bytes", "n.bin", preview_id="00000000-0000-4000-8000-000000000000"
    )
    assert status == 400 and body["error"]["code"] == "INVALID_PREVIEW"


async def test_upload_into_output_and_model_folders(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = b"pretend lora"
    status, body = await upload(server, data, "style.safetensors", tags="models,loras")
    assert status == 201
    assert body["tags"] == ["models", "loras"]
    lora_dir = server.kernel.models.folder_paths("loras")[0]
    assert (lora_dir / (b3(data).split(":")[1] + ".safetensors")).read_bytes() == data
    status, body = await upload(server, b"out", "o.txt", tags="output")
    assert status == 201 and body["metadata"]["type"] == "output"
    status, body = await upload(server, b"x", "x.bin", tags="models")
    assert status == 400 and body["error"]["code"] == "INVALID_TAGS"
    status, body = await upload(server, b"x", "x.bin", tags="models,nosuchfolder")
    assert status == 400 and body["error"]["code"] == "INVALID_TAGS"


async def test_upload_bad_input(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    status, body = await upload(server, b"x", "x.bin", user_metadata="{not json")
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await upload(server, b"x", "x.bin", user_metadata="[1, 2]")
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await upload(server, b"x", "x.bin", tags="input,missing")
    assert status == 400 and body["error"]["code"] == "PROTECTED_TAG"
    status, body = await upload(server, b"x", "x.bin", mime_type="not a mime")
    assert status == 400 and body["error"]["code"] == "INVALID_BODY"
    status, body = await server.json("POST", "/api/assets", data=form(None, name="no file"))
    assert status == 400 and body["error"]["code"] == "INVALID_BODY"
    status, body = await server.json("POST", "/api/assets", json={"name": "x"})
    assert status == 400 and body["error"]["code"] == "INVALID_BODY"
    status, body = await server.json("POST", "/api/assets", data=form(b"x", "x.bin", name="bad\x01name"))
    assert status == 400
    # Nothing was stored by any of these.
    status, listing = await server.json("GET", "/api/assets")
    assert listing["total"] == 0


async def test_upload_over_the_size_limit_is_413(comfy_server):
    server = await comfy_server(plugins=PLUGINS, max_upload_size=0.01)  # 10 KiB

    async def chunked():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for _ in range(20):
            yield b"x" * 1024
        yield b"\r\n--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    status, body = await server.json("POST", "/api/assets", data=chunked(), headers=headers)
    assert status == 413
    assert body["error"]["code"] == "FILE_TOO_LARGE"
    leftovers = [n for n in os.listdir(server.kernel.settings.user_path) if n.startswith(".assets-upload")]
    assert leftovers == []


async def test_from_hash_creates_reference(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(6)
    _, original = await upload(server, data, "a.png")
    status, body = await server.json(
        "POST",
        "/api/assets/from-hash",
        json={"hash": b3(data), "name": "alias.png", "tags": ["Gallery"], "user_metadata": {"x": True}},
    )
    assert status == 201
    assert body["created_new"] is True
    assert body["id"] != original["id"]
    assert body["asset_hash"] == b3(data) and body["size"] == len(data)
    assert body["mime_type"] == "image/png"
    assert body["tags"] == ["gallery"] and body["user_metadata"] == {"x": True}
    status, again = await server.json(
        "POST", "/api/assets/from-hash", json={"hash": b3(data), "name": "alias.png"}
    )
    assert status == 200 and again["created_new"] is False and again["id"] == body["id"]
    # The reference serves the original bytes.
    async with server.get(f"/api/assets/{body['id']}/content") as resp:
        assert resp.status == 200 and await resp.read() == data


async def test_from_hash_errors(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    unknown = b3(b"never uploaded")
    status, body = await server.json("POST", "/api/assets/from-hash", json={"hash": unknown, "name": "n"})
    assert status == 404 and body["error"]["code"] == "HASH_NOT_FOUND"
    status, body = await server.json(
        "POST", "/api/assets/from-hash", json={"hash": "blake3:xyz", "name": "n"}
    )
    assert status == 400 and body["error"]["code"] == "INVALID_HASH"
    status, body = await server.json("POST", "/api/assets/from-hash", json={"hash": unknown})
    assert status == 400 and body["error"]["code"] == "INVALID_BODY"
    status, body = await server.json("POST", "/api/assets/from-hash", data=b"{oops")
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await server.json("POST", "/api/assets/from-hash", json=[1, 2])
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await server.json(
        "POST", "/api/assets/from-hash", json={"hash": unknown, "name": "n", "user_metadata": "{}"}
    )
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await server.json(
        "POST", "/api/assets/from-hash", json={"hash": unknown, "name": "n", "tags": "a"}
    )
    assert status == 400 and body["error"]["code"] == "INVALID_TAGS"


async def test_upload_without_file_but_with_known_hash(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(7)
    await upload(server, data, "a.png")
    status, body = await server.json(
        "POST", "/api/assets", data=form(None, hash=b3(data), name="by-hash.png")
    )
    assert status == 201 and body["asset_hash"] == b3(data) and body["name"] == "by-hash.png"
    status, body = await server.json("POST", "/api/assets", data=form(None, hash=b3(b"nope"), name="x"))
    assert status == 404


async def test_head_hash(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(8)
    await upload(server, data, "a.png")
    async with server.request("HEAD", f"/api/assets/hash/{b3(data)}") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with server.request("HEAD", f"/api/assets/hash/{b3(b'absent')}") as resp:
        assert resp.status == 404
    async with server.request("HEAD", "/api/assets/hash/blake3:1234") as resp:
        assert resp.status == 400
    async with server.request("HEAD", "/api/assets/hash/" + "a" * 64) as resp:
        assert resp.status == 400


async def test_concurrent_identical_uploads_share_one_file(comfy_server):
    import asyncio

    server = await comfy_server(plugins=PLUGINS)
    data = png_bytes(9) * 2000
    results = await asyncio.gather(*(upload(server, data, f"c{i}.png") for i in range(6)))
    assert [status for status, _ in results] == [201] * 6
    assert len({body["id"] for _, body in results}) == 6
    assert len({body["asset_hash"] for _, body in results}) == 1
    files = [p for p in server.kernel.settings.input_path.iterdir() if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == data
