"""Helpers for the assets tests: multipart uploads and a few canned contents."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import aiohttp
import blake3

PLUGINS = ["assets", "models"]


def png_bytes(seed: int = 0) -> bytes:
    """A valid 1×1 PNG whose pixel depends on ``seed`` (so contents differ)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00" + bytes([seed % 256, (seed // 256) % 256, 7])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def form(data: bytes | None = None, filename: str = "file.bin", **fields: Any) -> aiohttp.FormData:
    fd = aiohttp.FormData(default_to_multipart=True)
    if data is not None:
        fd.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    for key, value in fields.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            fd.add_field(key, item)
    return fd


async def upload(server: Any, data: bytes, filename: str = "file.bin", **fields: Any) -> tuple[int, Any]:
    return await server.json("POST", "/api/assets", data=form(data, filename, **fields))
