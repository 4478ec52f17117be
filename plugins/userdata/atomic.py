"""Atomic file writes: a temp file in the target's folder, fsync, then a rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".userdata-"
TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """Names of this module's temp files: the startup sweep deletes them, so clients cannot use them."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(root: Path) -> int:
    """Delete temp files a killed process left behind under ``root``; returns how many.

    Only safe before the server accepts writes (startup), when no write can be in flight.
    """
    removed = 0
    if not root.is_dir():
        return 0
    for path in root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _temp_copy(path: Path, data: bytes) -> str:
    # Dot-prefixed so that v1 listings (which skip hidden files) never show a half-written file;
    # a fixed short prefix keeps the temp name legal however long the target's name is.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def place(source: Path, dest: Path, *, overwrite: bool) -> None:
    """Move the file ``source`` to ``dest`` in one step.

    Without ``overwrite`` an existing ``dest`` raises ``FileExistsError``, decided atomically: a
    hard link refuses to replace, so a racing writer's file is never clobbered; the source name
    is dropped afterwards.
    """
    if overwrite:
        os.replace(source, dest)
        return
    try:
        os.link(source, dest)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: fall back to check-then-rename.
        if os.path.lexists(dest):
            raise FileExistsError(str(dest)) from None
        os.replace(source, dest)
        return
    os.unlink(source)


def write_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError``, decided atomically
    (a hard link refuses to replace), so two racing creators cannot both win.
    """
    temp = _temp_copy(path, data)
    try:
        place(Path(temp), path, overwrite=overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
