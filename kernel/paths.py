"""The one path resolver: (root, subfolder, filename) → a path that is certainly inside root.

Every file route and plugin goes through ``safe_join``. Names are checked as strings before the
disk is touched, then containment is checked on the *resolved real paths* of both root and
target, so a symlink inside a root that points outside is refused. Percent-decoding is the HTTP
layer's job and happens once, before these functions see a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePath(ValueError):
    """A name that could leave its root or is not a valid file name; ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"unsafe path {name!r}: {reason}")
        self.name = name
        self.reason = reason


def split_relative(name: str, *, allow_empty: bool = False) -> list[str]:
    """Split a client-supplied relative path on ``/`` and ``\\`` into checked segments.

    Refuses NUL and control characters, absolute paths, drive letters, UNC and ``\\\\?\\``
    prefixes, any ``..`` segment and over-long segments or paths. ``.`` and empty segments
    (``a//b``) are dropped; ``a..b.png`` is a legitimate name.
    """
    if not isinstance(name, str):
        raise UnsafePath(repr(name), "not a string")
    if name == "":
        if allow_empty:
            return []
        raise UnsafePath(name, "empty name")
    if _CONTROL.search(name):
        raise UnsafePath(name, "control character in name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePath(name, "path too long")
    if name.startswith(("/", "\\")):
        raise UnsafePath(name, "absolute path")
    if _DRIVE.match(name):
        raise UnsafePath(name, "drive letter")
    segments = [s for s in re.split(r"[/\\]", name) if s not in ("", ".")]
    for segment in segments:
        if segment == "..":
            raise UnsafePath(name, "parent directory segment")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise UnsafePath(name, "path segment too long")
    if not segments and not allow_empty:
        raise UnsafePath(name, "empty name")
    return segments


def is_within(root: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """True when the real path of ``target`` is ``root``'s real path or lies under it."""
    real_root = os.path.realpath(root)
    real_target = os.path.realpath(target)
    return real_target == real_root or real_target.startswith(real_root.rstrip(os.sep) + os.sep)


def safe_join(root: str | os.PathLike[str], *parts: str, allow_root: bool = False) -> Path:
    """Join checked relative ``parts`` under ``root``; raise ``UnsafePath`` if it would escape.

    Empty parts (an absent subfolder) are allowed; the result must name something below
    ``root`` unless ``allow_root``. The returned path is ``root``-based (not symlink-resolved),
    but its real path has been verified to be inside ``root``'s real path.
    """
    segments: list[str] = []
    for part in parts:
        segments += split_relative(part, allow_empty=True)
    joined = "/".join(parts)
    if not segments and not allow_root:
        raise UnsafePath(joined, "empty name")
    target = Path(root, *segments)
    if len(os.fsencode(target)) > MAX_PATH_BYTES:
        raise UnsafePath(joined, "path too long")
    if not is_within(root, target):
        raise UnsafePath(joined, "outside its root")
    return target
