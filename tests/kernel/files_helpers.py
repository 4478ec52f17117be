"""Small helpers shared by the tests/kernel/test_files_*.py modules."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
from PIL import Image, PngImagePlugin


def png_bytes(
    size: tuple[int, int] = (8, 6),
    color: tuple[int, ...] = (200, 10, 30, 128),
    mode: str = "RGBA",
    text: dict[str, str] | None = None,
) -> bytes:
    img = Image.new(mode, size, color)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def upload_form(data: bytes, filename: str = "a.png", **fields: Any) -> aiohttp.FormData:
    # Browsers send raw UTF-8 file names; aiohttp would percent-encode them by default.
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form
