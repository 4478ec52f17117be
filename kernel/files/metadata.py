"""GET /view_metadata/{folder_name}?filename=: a model's safetensors ``__metadata__``.

Model folders belong to the models plugin; we reach them through ``kernel.models``
(``get_full_path(folder, name) -> Path | None``). Every failure is a 404, as in the reference.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

from kernel.app import KERNEL_KEY
from kernel.files.errors import error
from kernel.paths import UnsafePath, split_relative

MAX_HEADER_BYTES = 1024 * 1024


def read_safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The ``__metadata__`` object of a safetensors file; None when absent, oversized or unreadable."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                return None
            (size,) = struct.unpack("<Q", prefix)
            if size == 0 or size > MAX_HEADER_BYTES:
                return None
            raw = f.read(size)
    except OSError:
        return None
    if len(raw) != size:
        return None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


async def view_metadata(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    folder_name = request.match_info["folder_name"]
    filename = request.query.get("filename")
    models = kernel.models
    if models is None:
        return error(404, "Model folders are not available (the models plugin is disabled)")
    if not filename or not filename.lower().endswith(".safetensors"):
        return error(404, "filename must name a .safetensors file")
    try:
        split_relative(filename)
        path = models.get_full_path(folder_name, filename)
    except (UnsafePath, KeyError, ValueError):
        path = None
    if path is None:
        return error(404, "File not found")
    meta = await asyncio.to_thread(read_safetensors_metadata, Path(path))
    if meta is None:
        return error(404, "No readable safetensors metadata")
    return web.json_response(meta)
