"""Recursive file listings of model folders, cached per root and invalidated by directory mtimes.

A listing remembers the modification time of every directory it walked; adding, removing or
renaming an entry changes its directory's mtime, so one ``stat`` per directory tells whether a
cached listing still holds. Contents rewritten in place (same name) keep the cached sizes and
times until the directory changes, as in the reference server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileStat:
    name: str
    modified: float
    created: float
    size: int


def matches(name: str, extensions: Collection[str]) -> bool:
    """An empty extension set accepts every file."""
    return not extensions or os.path.splitext(name)[1].lower() in extensions


@dataclass
class RootListing:
    root: str
    # Relative ``/``-separated names of regular files (symlinks followed), in walk order.
    files: list[str]
    # Every directory walked → its st_mtime_ns; ``None`` records that the root did not exist.
    dir_mtimes: dict[str, int | None]
    _stats: dict[frozenset[str], list[FileStat]] = field(default_factory=dict)

    def is_current(self) -> bool:
        for directory, mtime in self.dir_mtimes.items():
            try:
                if os.stat(directory).st_mtime_ns != mtime:
                    return False
            except OSError:
                if mtime is not None:
                    return False
        return True

    def stats(self, extensions: frozenset[str]) -> list[FileStat]:
        """Sizes and times of the files matching ``extensions``, sorted by name; computed once."""
        cached = self._stats.get(extensions)
        if cached is not None:
            return cached
        out: list[FileStat] = []
        for name in sorted(self.files):
            if not matches(name, extensions):
                continue
            try:
                st = os.stat(os.path.join(self.root, name))
            except OSError:  # removed since the walk
                continue
            out.append(FileStat(name, st.st_mtime, st.st_ctime, st.st_size))
        self._stats[extensions] = out
        return out


def scan(root: str) -> RootListing:
    """Walk ``root`` following symlinks, skipping hidden entries (``.git`` included) and loops."""
    files: list[str] = []
    mtimes: dict[str, int | None] = {}
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        path, prefix = stack.pop()
        try:
            st = os.stat(path)
        except OSError:
            if path == root:
                mtimes[root] = None
            continue
        identity = (st.st_dev, st.st_ino)
        if identity in seen:  # a symlink back up the tree
            continue
        seen.add(identity)
        mtimes[path] = st.st_mtime_ns
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append((entry.path, prefix + entry.name + "/"))
                elif entry.is_file():
                    files.append(prefix + entry.name)
            except OSError:
                continue
    return RootListing(root, files, mtimes)


class ListingCache:
    """Thread-safe: HTTP handlers list from worker threads while node loaders list from the executor."""

    def __init__(self) -> None:
        self._roots: dict[str, RootListing] = {}
        self._lock = threading.Lock()

    def get(self, root: str | Path) -> RootListing:
        key = os.fspath(root)
        with self._lock:
            listing = self._roots.get(key)
            if listing is None or not listing.is_current():
                listing = scan(key)
                self._roots[key] = listing
            return listing

    def clear(self) -> None:
        with self._lock:
            self._roots.clear()
