"""POST /upload/image and /upload/mask over real HTTP with real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.kernel.files_helpers import open_image, png_bytes, upload_form


async def _upload(server: Any, path: str, form: aiohttp.FormData) -> tuple[int, Any]:
    return await server.json("POST", path, data=form)


async def test_upload_image_defaults_to_input(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    data = png_bytes()
    status, body = await _upload(server, "/upload/image", upload_form(data))
    assert status == 200
    assert body == {"name": "a.png", "subfolder": "", "type": "input"}
    assert (tmp_path / "input" / "a.png").read_bytes() == data


async def test_upload_image_api_prefix_and_types(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    for file_type in ("input", "output", "temp"):
        status, body = await _upload(
            server, "/api/upload/image", upload_form(b"x" + file_type.encode(), type=file_type)
        )
        assert status == 200, body
        assert body["type"] == file_type
        assert (tmp_path / file_type / "a.png").read_bytes() == b"x" + file_type.encode()


async def test_upload_image_subfolder_created_and_echoed_raw(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    status, body = await _upload(server, "/upload/image", upload_form(b"one", subfolder="deep/./er//sub"))
    assert status == 200
    assert body == {"name": "a.png", "subfolder": "deep/./er//sub", "type": "input"}
    assert (tmp_path / "input" / "deep" / "er" / "sub" / "a.png").read_bytes() == b"one"


async def test_upload_collisions_are_renamed_and_identical_content_reused(
    comfy_server: Any, tmp_path: Path
) -> None:
    server = await comfy_server()
    names = []
    for content in (b"first", b"second", b"third", b"second", b"first"):
        status, body = await _upload(server, "/upload/image", upload_form(content, filename="pic.png"))
        assert status == 200
        names.append(body["name"])
    assert names == ["pic.png", "pic (1).png", "pic (2).png", "pic (1).png", "pic.png"]
    root = tmp_path / "input"
    assert (root / "pic.png").read_bytes() == b"first"
    assert (root / "pic (1).png").read_bytes() == b"second"
    assert (root / "pic (2).png").read_bytes() == b"third"
    assert sorted(p.name for p in root.iterdir()) == ["pic (1).png", "pic (2).png", "pic.png"]


async def test_identical_content_reuse_does_not_rewrite(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    await _upload(server, "/upload/image", upload_form(b"same"))
    target = tmp_path / "input" / "a.png"
    mtime = target.stat().st_mtime_ns
    target.chmod(0o444)  # a write attempt would replace the inode or fail
    ino = target.stat().st_ino
    status, body = await _upload(server, "/upload/image", upload_form(b"same"))
    assert (status, body["name"]) == (200, "a.png")
    assert target.stat().st_ino == ino and target.stat().st_mtime_ns == mtime


async def test_upload_overwrite(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    await _upload(server, "/upload/image", upload_form(b"old"))
    for flag in ("true", "1"):
        status, body = await _upload(
            server, "/upload/image", upload_form(b"new-" + flag.encode(), overwrite=flag)
        )
        assert (status, body["name"]) == (200, "a.png")
        assert (tmp_path / "input" / "a.png").read_bytes() == b"new-" + flag.encode()
    status, body = await _upload(server, "/upload/image", upload_form(b"newer", overwrite="yes"))
    assert body["name"] == "a (1).png"


async def test_upload_hash_function_setting_is_used(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server(default_hashing_function="md5")
    await _upload(server, "/upload/image", upload_form(b"abc"))
    status, body = await _upload(server, "/upload/image", upload_form(b"abc"))
    assert (status, body["name"]) == (200, "a.png")
    status, body = await _upload(server, "/upload/image", upload_form(b"abd"))
    assert body["name"] == "a (1).png"


async def test_upload_errors_are_json_4xx(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    status, body = await server.json("POST", "/upload/image", data={"type": "input"})
    assert status == 400 and "No file" in body["error"]
    status, body = await _upload(server, "/upload/image", upload_form(b"x", filename=""))
    assert status == 400 and "error" in body
    status, body = await _upload(server, "/upload/image", upload_form(b"x", type="models"))
    assert status == 400 and "Invalid type" in body["error"]
    status, body = await server.json("POST", "/upload/image", json={"image": "x"})
    assert status == 400
    status, body = await server.json(
        "POST",
        "/upload/image",
        data=b"--xx\r\nbroken",
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert 400 <= status < 500, body
    assert list((tmp_path / "input").iterdir()) == []


async def test_upload_too_large_is_413(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server(max_upload_size=0.01)  # ~10 KiB
    status, body = await _upload(server, "/upload/image", upload_form(b"z" * 50_000))
    assert status == 413 and "error" in body
    assert not (tmp_path / "input" / "a.png").exists()


async def test_upload_odd_legitimate_names(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    for name in ("a..b.png", "ünïcödé 图像.png", "with  spaces (x).png", "100%25 done.png"):
        status, body = await _upload(server, "/upload/image", upload_form(name.encode(), filename=name))
        assert status == 200, (name, body)
        assert body["name"] == name
        assert (tmp_path / "input" / name).read_bytes() == name.encode()


async def test_upload_mask_composites_alpha_and_keeps_text_chunks(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    original = png_bytes(
        size=(4, 3), color=(10, 20, 30, 255), text={"workflow": '{"nodes": []}', "prompt": "{}"}
    )
    out = tmp_path / "output"
    out.mkdir(exist_ok=True)
    (out / "orig.png").write_bytes(original)
    mask = png_bytes(size=(4, 3), color=(0, 0, 0, 40))
    ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "output"})
    status, body = await _upload(
        server,
        "/upload/mask",
        upload_form(mask, filename="clipspace-mask.png", original_ref=ref, subfolder="clipspace"),
    )
    assert status == 200, body
    assert body == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
    stored = open_image((tmp_path / "input" / "clipspace" / "clipspace-mask.png").read_bytes())
    assert stored.mode == "RGBA"
    assert stored.getpixel((0, 0)) == (10, 20, 30, 40)
    assert stored.text["workflow"] == '{"nodes": []}'
    assert stored.text["prompt"] == "{}"


async def test_upload_mask_annotation_and_default_output(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    (tmp_path / "temp").mkdir(exist_ok=True)
    (tmp_path / "output").mkdir(exist_ok=True)
    mask = png_bytes(size=(2, 2), color=(0, 0, 0, 7))
    # Default original type is output.
    (tmp_path / "output" / "o.png").write_bytes(png_bytes(size=(2, 2), color=(1, 2, 3, 255)))
    status, body = await _upload(
        server, "/upload/mask", upload_form(mask, filename="m1.png", original_ref='{"filename": "o.png"}')
    )
    assert status == 200, body
    assert open_image((tmp_path / "input" / "m1.png").read_bytes()).getpixel((1, 1)) == (1, 2, 3, 7)
    # Annotation overrides type; the temp file is written after startup emptied temp.
    (tmp_path / "temp" / "t.png").write_bytes(png_bytes(size=(2, 2), color=(9, 9, 9, 255)))
    ref = json.dumps({"filename": "t.png [temp]", "type": "output"})
    status, body = await _upload(
        server, "/upload/mask", upload_form(mask, filename="m2.png", original_ref=ref)
    )
    assert status == 200, body
    assert open_image((tmp_path / "input" / "m2.png").read_bytes()).getpixel((0, 0)) == (9, 9, 9, 7)


async def test_upload_mask_errors(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    (tmp_path / "output" / "o.png").write_bytes(png_bytes(size=(2, 2)))
    mask = png_bytes(size=(2, 2))
    cases = [
        ({}, 400),  # no original_ref
        ({"original_ref": "{not json"}, 400),
        ({"original_ref": "[1, 2]"}, 400),
        ({"original_ref": '{"filename": 3}'}, 400),
        ({"original_ref": '{"filename": "o.png", "type": "models"}'}, 400),
        ({"original_ref": '{"filename": "../o.png"}'}, 400),
        ({"original_ref": '{"filename": "missing.png"}'}, 404),
    ]
    for fields, expected in cases:
        status, body = await _upload(server, "/upload/mask", upload_form(mask, filename="m.png", **fields))
        assert status == expected, (fields, body)
        assert "error" in body
    status, body = await _upload(
        server,
        "/upload/mask",
        upload_form(png_bytes(size=(3, 3)), filename="m.png", original_ref='{"filename": "o.png"}'),
    )
    assert status == 400 and "does not match" in body["error"]
    status, body = await _upload(
        server,
        "/upload/mask",
        upload_form(b"not an image", filename="m.png", original_ref='{"filename": "o.png"}'),
    )
    assert status == 400
    assert list((tmp_path / "input").iterdir()) == []


async def test_upload_onto_a_directory_is_409(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    (tmp_path / "input" / "a.png").mkdir()
    status, body = await _upload(server, "/upload/image", upload_form(b"x", overwrite="true"))
    assert status == 409 and "error" in body
    # Without overwrite the directory is simply a taken name.
    status, body = await _upload(server, "/upload/image", upload_form(b"x"))
    assert (status, body["name"]) == (200, "a (1).png")


async def test_overwrite_replaces_a_link_instead_of_writing_through_it(
    comfy_server: Any, tmp_path: Path
) -> None:
    server = await comfy_server()
    real = tmp_path / "input" / "real.png"
    real.write_bytes(b"real")
    (tmp_path / "input" / "alias.png").symlink_to(real)
    status, body = await _upload(
        server, "/upload/image", upload_form(b"new", filename="alias.png", overwrite="true")
    )
    assert (status, body["name"]) == (200, "alias.png")
    assert real.read_bytes() == b"real"
    assert not (tmp_path / "input" / "alias.png").is_symlink()
    assert (tmp_path / "input" / "alias.png").read_bytes() == b"new"
    assert not [p for p in (tmp_path / "input").iterdir() if p.name.startswith(".upload-")]
