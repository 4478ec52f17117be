"""Output files between workers and the API server.

A worker attaches the files named by a node's UI output (``{"filename", "subfolder", "type"}``
entries of type ``output`` or ``temp``) to the message that announces them; the API server writes
them under its own directories before it forwards the message, so ``/view`` serves them as soon
as a client hears of them. A name already taken by different bytes (two workers both counting
from ``ComfyUI_00001_.png``) gets a suffix, and every later mention of it in that prompt is
rewritten to match.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kernel.paths import UnknownFileType, UnsafePath, resolve_file
from kernel.settings import Settings
from plugins.distributed.protocol import FileBlob

log = logging.getLogger("comfykernel.distributed")

TRANSFERRED_TYPES = ("output", "temp")
Key = tuple[str, str, str]


def file_refs(value: Any) -> list[dict[str, Any]]:
    """Every file reference in a UI output (any nesting of dicts and lists)."""
    found: list[dict[str, Any]] = []
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if isinstance(current.get("filename"), str) and current.get("type") in TRANSFERRED_TYPES:
                found.append(current)
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            stack.extend(current)
    return found


def _key(ref: dict[str, Any]) -> Key:
    return (str(ref.get("type")), str(ref.get("subfolder") or ""), str(ref["filename"]))


def collect(value: Any, settings: Settings, sent: set[Key]) -> list[FileBlob]:
    """Read the files ``value`` names (worker side), skipping those already in ``sent``."""
    blobs: list[FileBlob] = []
    for ref in file_refs(value):
        key = _key(ref)
        if key in sent:
            continue
        try:
            path = resolve_file(settings, *key)
            data = path.read_bytes()
        except (UnsafePath, UnknownFileType, OSError) as exc:
            log.warning("distributed: cannot send output %s: %s", key, exc)
            continue
        sent.add(key)
        blobs.append(FileBlob(type=key[0], subfolder=key[1], filename=key[2], data=data))
    return blobs


def _free_name(path: Path, tag: str) -> Path:
    candidate = path.with_name(f"{path.stem}_{tag}{path.suffix}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{tag}_{n}{path.suffix}")
        n += 1
    return candidate


def store(blobs: list[FileBlob], settings: Settings, tag: str, renames: dict[Key, str]) -> None:
    """Write ``blobs`` under the API server's directories (API side); note renames in ``renames``."""
    for blob in blobs:
        key = (blob.type, blob.subfolder, blob.filename)
        if blob.type not in TRANSFERRED_TYPES:
            log.warning("distributed: refused output %s: only output and temp files travel", key)
            continue
        try:
            path = resolve_file(settings, *key)
        except (UnsafePath, UnknownFileType) as exc:
            # A worker cannot make the API server write outside its roots.
            log.warning("distributed: refused output %s: %s", key, exc)
            continue
        if key in renames:
            path = path.with_name(renames[key])
        elif path.exists():
            if path.read_bytes() == blob.data:
                continue
            path = _free_name(path, tag)
            renames[key] = path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        partial.write_bytes(blob.data)
        os.replace(partial, path)


def rewrite(value: Any, renames: dict[Key, str]) -> None:
    """Point the references in ``value`` at renamed files, in place."""
    if not renames:
        return
    for ref in file_refs(value):
        new = renames.get(_key(ref))
        if new is not None:
            ref["filename"] = new
