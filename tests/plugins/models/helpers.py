"""Small builders shared by the models plugin tests: files on disk and raw (pre-encoded) requests."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import yarl
from PIL import Image


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (7, 5), color: tuple[int, int, int] = (200, 10, 10)
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def safetensors_bytes(metadata: dict[str, str]) -> bytes:
    """A valid safetensors file with one tiny tensor and ``metadata``."""
    header = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0"


async def raw_get(server: Any, path: str) -> tuple[int, bytes, str]:
    """GET a path exactly as written (percent-escapes are not normalised by the client)."""
    async with server.session.get(yarl.URL(server.url + path, encoded=True)) as resp:
        return resp.status, await resp.read(), resp.content_type
