"""GET /view over real HTTP: raw files, previews, channels, the content-type policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kernel.files_helpers import open_image, png_bytes, upload_form


@pytest.fixture
async def server(comfy_server: Any) -> Any:
    return await comfy_server()


def _put(tmp_path: Path, rel: str, data: bytes, root: str = "output") -> Path:
    path = tmp_path / root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_upload_then_view_round_trip(server: Any) -> None:
    data = png_bytes(size=(5, 4), color=(10, 200, 30, 77))
    status, body = await server.json(
        "POST", "/upload/image", data=upload_form(data, filename="r.png", subfolder="s")
    )
    assert status == 200
    params = {"filename": body["name"], "subfolder": body["subfolder"], "type": body["type"]}
    async with server.get("/view", params=params) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"] == 'filename="r.png"'
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert await r.read() == data
    async with server.get("/view", params={**params, "preview": "webp;90"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/webp"
        assert r.headers["Content-Disposition"] == 'filename="r.png"'
        img = open_image(await r.read())
        assert img.format == "WEBP" and img.size == (5, 4)
    async with server.get("/api/view", params={**params, "channel": "a"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/png"
        img = open_image(await r.read())
        assert img.mode == "RGBA"
        assert img.getpixel((0, 0)) == (0, 0, 0, 77)


async def test_view_default_type_is_output_and_annotation_overrides(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "x.txt", b"output-x")
    _put(tmp_path, "x.txt", b"input-x", root="input")
    async with server.get("/view", params={"filename": "x.txt"}) as r:
        assert await r.read() == b"output-x"
        assert r.headers["Content-Type"].startswith("text/plain")
    async with server.get("/view", params={"filename": "x.txt", "type": "input"}) as r:
        assert await r.read() == b"input-x"
    async with server.get("/view", params={"filename": "x.txt [input]", "type": "output"}) as r:
        assert await r.read() == b"input-x"


async def test_view_preview_jpeg_and_quality_and_fallbacks(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "p.png", png_bytes(size=(16, 16), color=(250, 0, 0, 255)))
    async with server.get("/view", params={"filename": "p.png", "preview": "jpeg;50"}) as r:
        assert r.headers["Content-Type"] == "image/jpeg"
        img = open_image(await r.read())
        assert img.format == "JPEG" and img.mode == "RGB"
    # Unknown format → webp; channel with "a" forces webp even for jpeg.
    for params in ({"preview": "gif;10"}, {"preview": "jpeg;90", "channel": "a"}, {"preview": "webp;abc"}):
        async with server.get("/view", params={"filename": "p.png", **params}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "image/webp", params
            assert open_image(await r.read()).format == "WEBP"
    async with server.get("/view", params={"filename": "p.png", "preview": "webp;90", "channel": "rgb"}) as r:
        assert open_image(await r.read()).mode == "RGB"


async def test_view_channels(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "rgba.png", png_bytes(color=(1, 2, 3, 99)))
    _put(tmp_path, "rgb.png", png_bytes(color=(4, 5, 6), mode="RGB"))
    async with server.get("/view", params={"filename": "rgba.png", "channel": "rgb"}) as r:
        img = open_image(await r.read())
        assert r.headers["Content-Type"] == "image/png"
        assert img.mode == "RGB" and img.getpixel((0, 0)) == (1, 2, 3)
    async with server.get("/view", params={"filename": "rgb.png", "channel": "a"}) as r:
        img = open_image(await r.read())
        assert img.getpixel((0, 0)) == (0, 0, 0, 255)
    raw = png_bytes(color=(1, 2, 3, 99))
    async with server.get("/view", params={"filename": "rgba.png", "channel": "rgba"}) as r:
        assert await r.read() == raw


async def test_view_conversion_of_a_non_image_is_400(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "fake.png", b"not really a png")
    for params in ({"preview": "webp;90"}, {"channel": "a"}, {"channel": "rgb"}):
        status, body = await server.json("GET", "/view", params={"filename": "fake.png", **params})
        assert status == 400 and "error" in body


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("evil.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"),
        ("evil.html", b"<script>alert(1)</script>"),
        ("evil.htm", b"<script>alert(1)</script>"),
        ("evil.js", b"alert(1)"),
        ("evil.xml", b"<x/>"),
        ("evil.xhtml", b"<html/>"),
        ("evil.css", b"body{}"),
    ],
)
async def test_view_dangerous_types_are_attachments(
    server: Any, tmp_path: Path, name: str, data: bytes
) -> None:
    _put(tmp_path, name, data)
    async with server.get("/view", params={"filename": name}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Vary"] == "Sec-Fetch-Dest"
        assert r.headers["Cache-Control"] == "no-store"
        assert await r.read() == data


async def test_view_svg_as_image_destination_keeps_its_type(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "ok.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    async with server.get("/view", params={"filename": "ok.svg"}, headers={"Sec-Fetch-Dest": "image"}) as r:
        assert r.headers["Content-Type"] == "image/svg+xml"
        assert r.headers["Content-Disposition"] == 'filename="ok.svg"'
        assert r.headers["Cache-Control"] == "no-store"
    _put(tmp_path, "h.html", b"<p>")
    async with server.get("/view", params={"filename": "h.html"}, headers={"Sec-Fetch-Dest": "image"}) as r:
        assert r.headers["Content-Type"] == "application/octet-stream"


async def test_view_safe_types_and_unknown_extension(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "clip.mp4", b"\x00\x00\x00\x18ftypmp42")
    _put(tmp_path, "blob.weird-ext", b"\x01\x02")
    async with server.get("/view", params={"filename": "clip.mp4"}) as r:
        assert r.headers["Content-Type"] == "video/mp4"
        assert "Vary" not in r.headers
    async with server.get("/view", params={"filename": "blob.weird-ext"}) as r:
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"] == 'filename="blob.weird-ext"'


async def test_view_disposition_escapes_and_encodes(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, 'q"uote.png', b"q")
    _put(tmp_path, "ünï 图.png", b"u")
    async with server.get("/view", params={"filename": 'q"uote.png'}) as r:
        assert await r.read() == b"q"
        assert r.headers["Content-Disposition"] == 'filename="q\\"uote.png"'
    async with server.get("/view", params={"filename": "ünï 图.png"}) as r:
        assert r.status == 200
        assert await r.read() == b"u"
        assert r.headers["Content-Disposition"] == (
            "filename=\"?n? ?.png\"; filename*=UTF-8''%C3%BCn%C3%AF%20%E5%9B%BE.png"
        )


async def test_view_odd_legitimate_names(server: Any, tmp_path: Path) -> None:
    for name in ("a..b.png", "with  spaces.png", "50% off.png", "..hidden.png"):
        _put(tmp_path, name, name.encode(), root="input")
        async with server.get("/view", params={"filename": name, "type": "input"}) as r:
            assert r.status == 200, name
            assert await r.read() == name.encode()


async def test_view_filename_may_carry_a_relative_path(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "sub/deeper/f.txt", b"deep")
    async with server.get("/view", params={"filename": "deeper/f.txt", "subfolder": "sub"}) as r:
        assert await r.read() == b"deep"
        assert r.headers["Content-Disposition"] == 'filename="f.txt"'


async def test_view_errors(server: Any, tmp_path: Path) -> None:
    _put(tmp_path, "x.png", b"x")
    (tmp_path / "output" / "adir").mkdir()
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 404),
        ({"filename": "missing.png"}, 404),
        ({"filename": "adir"}, 404),
        ({"filename": ""}, 400),
        ({"filename": " [output]"}, 400),
        ({"filename": "x.png", "type": "models"}, 400),
        ({"filename": "x.png", "type": ""}, 200),  # empty type = default
        ({"filename": "../x.png"}, 400),
        ({"filename": "/x.png"}, 400),
        ({"filename": "x.png", "subfolder": ".."}, 403),
        ({"filename": "x.png", "subfolder": "../output"}, 403),
        ({"filename": "x.png", "subfolder": "/tmp"}, 403),
        ({"filename": "blake3:abc"}, 404),
    ]
    for params, expected in cases:
        async with server.get("/view", params=params) as r:
            assert r.status == expected, params
            if expected >= 400:
                assert (await r.json())["error"]
