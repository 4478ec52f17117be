"""A user's files: name resolution, listings (v1 and v2), writes, moves and deletes.

Blocking filesystem work lives here as plain functions; the routes run them in a thread.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kernel.paths import UnsafePath, is_within, safe_join
from plugins.userdata import atomic
from plugins.userdata.atomic import write_atomic

_STILL_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


def decode_name(raw: str) -> str:
    """Undo the reference's second percent-decoding (``workflows%252Fx.json`` → ``workflows/x.json``).

    aiohttp has decoded once already. The reference decodes again whenever ``%`` remains; a name
    that *still* holds an escape after that could only be reached by a third decoding somewhere,
    and the reference cannot round-trip it either, so it is refused instead of stored literally.
    """
    if "%" not in raw:
        return raw
    name = unquote(raw, errors="strict")
    if _STILL_ENCODED.search(name):
        raise UnsafePath(raw, "percent-encoded more than twice")
    return name


def resolve(user_root: Path, raw: str, *, allow_root: bool = False) -> Path:
    """The path a client name denotes inside ``user_root``; ``UnsafePath`` if it could escape."""
    try:
        name = decode_name(raw)
    except UnicodeDecodeError:
        raise UnsafePath(raw, "invalid percent-encoding") from None
    return safe_join(user_root, name, allow_root=allow_root)


def relative_name(path: Path, user_root: Path) -> str:
    """A path relative to ``user_root`` with the OS separator, as the reference answers POSTs."""
    return os.path.relpath(path, user_root)


def _ms(ns: int) -> int:
    return ns // 1_000_000


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    """The v1 ``full_info`` record; times are integer milliseconds."""
    st = path.stat()
    return {
        "path": Path(os.path.relpath(path, relative_to)).as_posix(),
        "size": st.st_size,
        "modified": _ms(st.st_mtime_ns),
        "created": _ms(st.st_ctime_ns),
    }


def _contained_file(path: str, user_root: Path) -> bool:
    # A symlink pointing outside the user's folder is neither listed nor followed.
    return os.path.isfile(path) and is_within(user_root, path)


def list_v1(directory: Path, user_root: Path, *, recurse: bool, full_info: bool, split: bool) -> list[Any]:
    """``GET /userdata``: the files (not folders) below ``directory``, hidden ones skipped."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        # glob's "*" skips dot-names, at every level for "**" as well.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recurse else []
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not name.startswith(".") and _contained_file(full, user_root):
                found.append(full)
    results: list[Any] = []
    for full in found:
        rel = Path(os.path.relpath(full, directory)).as_posix()
        if full_info:
            results.append(file_info(Path(full), directory))
        elif split:
            results.append([rel, *rel.split("/")])
        else:
            results.append(rel)
    return results


def list_v2(target: Path, user_root: Path) -> list[dict[str, Any]]:
    """``GET /v2/userdata``: everything below ``target``, paths relative to the user's root.

    Directories come first, then by lower-cased name; ``modified`` is float seconds.
    """
    results: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if is_within(user_root, full):
                rel = Path(os.path.relpath(full, user_root)).as_posix()
                results.append({"name": name, "path": rel, "type": "directory"})
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not _contained_file(full, user_root):
                continue
            try:
                st = os.stat(full)
            except OSError:
                continue  # vanished while walking
            rel = Path(os.path.relpath(full, user_root)).as_posix()
            results.append(
                {"name": name, "path": rel, "type": "file", "size": st.st_size, "modified": st.st_mtime}
            )
    results.sort(key=lambda item: (item["type"] != "directory", item["name"].lower()))
    return results


def ensure_parent(path: Path, user_root: Path) -> None:
    """Create the folders above ``path``; they were checked to be inside ``user_root``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # A file sits where a folder is needed; FileExistsError would read as "target exists".
        raise NotADirectoryError(str(path.parent)) from None
    if not is_within(user_root, path.parent):
        # Only a symlink planted between check and create gets here.
        raise UnsafePath(str(path), "outside its root")


def write_file(path: Path, user_root: Path, data: bytes, *, overwrite: bool) -> None:
    ensure_parent(path, user_root)
    write_atomic(path, data, overwrite=overwrite)


def move(source: Path, dest: Path, user_root: Path, *, overwrite: bool) -> None:
    """Rename ``source`` to ``dest``; ``FileExistsError`` if ``dest`` exists and not ``overwrite``.

    Folders move only to a free name: they are never merged into or swapped with another.
    """
    ensure_parent(dest, user_root)
    if source.is_dir():
        if os.path.lexists(dest):
            raise FileExistsError(str(dest))
        os.rename(source, dest)
        return
    atomic.place(source, dest, overwrite=overwrite)
