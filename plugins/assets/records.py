"""Turning a file on disk into a ``FileRecord``: hash, type, name, root tags, system metadata."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from plugins.assets import hashing, mime
from plugins.assets.store import FileRecord


def describe(
    path: str,
    tags: list[str],
    name: str,
    metadata: dict[str, Any],
    *,
    owner: str = "",
    prompt_id: str | None = None,
    cancel: threading.Event | None = None,
) -> FileRecord:
    """Hash ``path`` (blocking: call it off the loop) and describe it for the store."""
    stat = os.stat(path)
    content_hash, size, head = hashing.hash_file_head(path, cancel, mime.SNIFF_BYTES)
    return FileRecord(
        path=path,
        hash=content_hash,
        size=size,
        mtime=stat.st_mtime,
        mime_type=mime.sniff(head, name),
        name=name,
        tags=tags,
        metadata=metadata,
        owner=owner,
        prompt_id=prompt_id,
    )


def file_metadata(file_type: str, root: Path | str, path: Path | str) -> dict[str, Any]:
    """``{"type", "subfolder", "filename"}``: how /view names a file of input/output/temp."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    subfolder, _, filename = rel.rpartition("/")
    return {"type": file_type, "subfolder": subfolder, "filename": filename}
