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


def raw_multipart(data: bytes, filename: str, **fields: str) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so hostile file names (NUL, CR/LF) reach the server."""
    boundary = "----comfykernel-test-boundary"
    parts: list[bytes] = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    quoted = filename.replace('"', "%22").encode("utf-8", "surrogatepass")
    parts.append(
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="image"; filename="'
        + quoted
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
