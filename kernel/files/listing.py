"""GET /internal/files/{directory_type}: the file names of one root, newest first, each annotated
with its root (``"a.png [output]"``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from kernel.app import KERNEL_KEY
from kernel.files.errors import error
from kernel.paths import FILE_TYPES, is_within, type_root


def list_files(root: Path) -> list[str]:
    """Visible regular files directly in ``root`` (no hidden files, no links leading outside)."""
    found: list[tuple[float, str]] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            if entry.is_symlink() and not is_within(root, entry.path):
                continue
            found.append((entry.stat().st_mtime, entry.name))
        except OSError:
            continue  # vanished or unreadable while listing
    found.sort(key=lambda item: -item[0])
    return [name for _, name in found]


async def internal_files(request: web.Request) -> web.Response:
    directory_type = request.match_info["directory_type"]
    if directory_type not in FILE_TYPES:
        return error(400, "Invalid directory type: expected one of input, output, temp")
    kernel = request.app[KERNEL_KEY]
    root = type_root(kernel, directory_type)
    names = await asyncio.to_thread(list_files, root)
    # Annotated as the reference's route sends them ("a.png [output]"): the frontend's remote
    # combos (LoadImageOutput) take the names as widget values unchanged, and only the annotation
    # tells its preview (/view?type=...) and the loader node which folder the file is in.
    # The same rule as /view: an authentication plugin hides other users' outputs.
    return web.json_response(
        [
            f"{name} [{directory_type}]"
            for name in names
            if kernel.hooks.may_read_file(kernel, request, directory_type, root / name)
        ]
    )
