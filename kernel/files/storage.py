"""Writing uploads: duplicate detection by content hash, ``name (1).ext`` renames, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel.paths import UnsafePath, check_segment, is_within

_CHUNK = 1 << 20


def _hasher(algorithm: str) -> Callable[[], Any]:
    if algorithm == "blake3":
        import blake3

        return blake3.blake3
    try:
        hashlib.new(algorithm)
    except ValueError:
        raise ValueError(f"unknown hashing function {algorithm!r}") from None
    return lambda: hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str) -> str:
    h = _hasher(algorithm)()
    h.update(data)
    return str(h.hexdigest())


def digest_file(path: Path, algorithm: str) -> str:
    h = _hasher(algorithm)()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return str(h.hexdigest())


def store_upload(
    root: Path, directory: Path, filename: str, data: bytes, overwrite: bool, algorithm: str
) -> str:
    """Write ``data`` as ``directory/filename`` and return the name actually used.

    Without ``overwrite`` an existing file with identical content is reused (nothing written)
    and a different one makes us try ``stem (1).ext``, ``stem (2).ext``, ... ``directory`` must
    already be checked to lie inside ``root``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not is_within(root, directory):
        raise UnsafePath(str(directory.relative_to(root)), "outside its root")
    if overwrite:
        _atomic_write(directory / filename, data, exclusive=False)
        return filename
    digest = digest_bytes(data, algorithm)
    stem, ext = os.path.splitext(filename)
    candidate, counter = filename, 1
    while True:
        target = directory / candidate
        if not os.path.lexists(target):
            try:
                _atomic_write(target, data, exclusive=True)
                return candidate
            except FileExistsError:
                continue  # lost a race with another upload: look at the winner's content
        # Hash only regular files inside the root: never read through a symlink that escapes.
        if target.is_file() and is_within(root, target) and digest_file(target, algorithm) == digest:
            return candidate
        candidate = check_segment(f"{stem} ({counter}){ext}")
        counter += 1


def _atomic_write(target: Path, data: bytes, *, exclusive: bool) -> None:
    if exclusive:
        # O_CREAT|O_EXCL refuses an existing name, a dangling symlink included, so a racing
        # upload or a planted link is never written through.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(target)
            raise
        return
    # Overwrite: write beside the target, then rename over it; an existing symlink at the
    # target is replaced rather than followed, and readers never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
