"""Seeding: a background thread that walks the models/input/output roots and records every file.

Files already recorded with the same size and mtime are skipped without hashing, so a second
seed over an unchanged tree adds nothing. Progress is readable at any time; cancel stops the
walk between files (and inside a large file, between chunks).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from kernel import StashKey
from plugins.assets import hashing, records
from plugins.assets.store import AssetStore, FileRecord
from plugins.assets.tags import ROOT_TAGS

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.assets")

_BATCH = 256
IDLE, RUNNING, COMPLETED, CANCELLED, FAILED = "idle", "running", "completed", "cancelled", "failed"


class SeedStatus(msgspec.Struct, kw_only=True):
    status: str = IDLE
    roots: list[str] = msgspec.field(default_factory=list)
    phase: str = ""
    total: int = 0
    scanned: int = 0
    hashed: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    errors: int = 0
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Root:
    """One directory to walk and what its files become."""

    kind: str  # models | input | output
    directory: Path
    tags: tuple[str, ...]
    extensions: frozenset[str]  # empty = every file
    follow_links: bool  # administrators link model folders elsewhere; uploads roots never


def resolve_roots(kernel: Kernel, names: list[str]) -> list[Root]:
    """The directories behind root names; ``models`` is skipped when the models plugin is off."""
    roots: list[Root] = []
    seen: set[Path] = set()
    for name in names:
        if name == "models":
            models = kernel.models
            if models is None:
                continue
            for kind, paths in models.all_folder_paths().items():
                extensions = frozenset(models.extensions(kind))
                for path in paths:
                    if path not in seen:
                        seen.add(path)
                        roots.append(Root("models", path, ("models", kind), extensions, True))
        elif name in ("input", "output"):
            directory = kernel.settings.input_path if name == "input" else kernel.settings.output_path
            if directory not in seen:
                seen.add(directory)
                roots.append(Root(name, directory, (name,), frozenset(), False))
    return roots


def _walk(root: Root, cancel: threading.Event) -> list[str]:
    """Every file to record under ``root``, in a stable order.

    Dot-entries are in-flight uploads and editor droppings, not assets. In the input and
    output roots symlinks are skipped (a link must not pull outside files into the store);
    model folders may be links the administrator set up, so there they are followed.
    """
    found: list[str] = []
    stack = [str(root.directory)]
    while stack and not cancel.is_set():
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[str] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink() and not root.follow_links:
                    continue
                if entry.is_dir():
                    subdirs.append(entry.path)
                elif entry.is_file():
                    if root.extensions and os.path.splitext(entry.name)[1].lower() not in root.extensions:
                        continue
                    found.append(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
    return found


def _describe(root: Root, path: str, cancel: threading.Event) -> FileRecord:
    if root.kind == "models":
        rel = os.path.relpath(path, root.directory).replace(os.sep, "/")
        return records.describe(
            path, list(root.tags), rel, {"folder": root.tags[1], "filename": rel}, cancel=cancel
        )
    meta = records.file_metadata(root.kind, root.directory, path)
    return records.describe(path, list(root.tags), meta["filename"], meta, cancel=cancel)


class Seeder:
    def __init__(self, kernel: Kernel, store: AssetStore) -> None:
        self._kernel = kernel
        self._store = store
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = SeedStatus()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return msgspec.structs.asdict(self._status)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, names: list[str]) -> bool:
        """Start a seed of the named roots; False when one is already running."""
        with self._lock:
            if self.running:
                return False
            self._cancel = threading.Event()
            self._status = SeedStatus(
                status=RUNNING, roots=list(names), phase="scanning", started_at=time.time()
            )
            roots = resolve_roots(self._kernel, names)
            self._thread = threading.Thread(
                target=self._run, args=(roots, self._cancel), name="assets-seed", daemon=True
            )
            self._thread.start()
            return True

    def cancel(self) -> bool:
        """Ask a running seed to stop; False when none runs."""
        with self._lock:
            if not self.running:
                return False
            self._cancel.set()
            return True

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)
            st = self._status
            st.progress = (
                round(st.scanned / st.total, 4) if st.total else (1.0 if st.phase == "hashing" else 0.0)
            )

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self._status, key, getattr(self._status, key) + value)
            st = self._status
            st.progress = round(st.scanned / st.total, 4) if st.total else 0.0

    def _run(self, roots: list[Root], cancel: threading.Event) -> None:
        try:
            self._seed(roots, cancel)
            final = CANCELLED if cancel.is_set() else COMPLETED
        except Exception:
            log.exception("asset seed failed")
            final = FAILED
        self._update(status=final, phase="", finished_at=time.time())

    def _seed(self, roots: list[Root], cancel: threading.Event) -> None:
        work: list[tuple[Root, str]] = []
        for root in roots:
            work += [(root, path) for path in _walk(root, cancel)]
        if cancel.is_set():
            return
        self._update(total=len(work), phase="hashing")
        known = self._store.known_files()
        batch: list[FileRecord] = []
        unchanged: list[str] = []
        for root, path in work:
            if cancel.is_set():
                break
            try:
                stat = os.stat(path)
                seen = known.get(path)
                if seen is not None and seen[0] == stat.st_mtime and seen[1] == stat.st_size:
                    unchanged.append(seen[2])
                    self._bump(scanned=1, skipped=1)
                    continue
                batch.append(_describe(root, path, cancel))
                self._bump(scanned=1, hashed=1)
            except hashing.HashCancelled:
                break
            except OSError as exc:
                log.warning("asset seed: cannot read %s: %s", path, exc)
                self._bump(scanned=1, errors=1)
                continue
            if len(batch) >= _BATCH:
                self._flush(batch)
                batch = []
        self._flush(batch)
        # A file that came back after a prune is no longer missing.
        self._store.clear_missing(unchanged)

    def _flush(self, batch: list[FileRecord]) -> None:
        if batch:
            created, updated = self._store.record_files(batch)
            self._bump(created=created, updated=updated)


SEEDER = StashKey[Seeder]()
DEFAULT_ROOTS = list(ROOT_TAGS)
