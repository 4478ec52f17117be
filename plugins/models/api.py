"""The models plugin's public Python API, reached as ``kernel.models`` (a ``ModelPaths``).

Node loaders and the compat plugin's ``folder_paths`` shim use it::

    models = kernel.models
    models.list_names("checkpoints")                  # ["sd15.safetensors", "xl/base.safetensors"]
    models.get_full_path("checkpoints", "sd15.safetensors")   # Path or None
    models.folder_paths("unet")                       # aliases accepted: diffusion_models' folders
    models.add_folder("loras", "/mnt/loras", is_default=True)
    models.add_extensions("diffusion_models", {".gguf"})

Folder kinds come from ``kernel.model_folders`` (the ``register_model_folders`` hook); their
folders are the defaults under the models root, then ``extra_model_paths.yaml`` entries, then
folders added at run time. Every method is thread-safe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.paths import UnsafePath, split_relative
from plugins.models.folders import PT_EXTENSIONS, default_dirs
from plugins.models.listing import FileStat, ListingCache, matches

if TYPE_CHECKING:
    from kernel.registry import ModelFolderRegistry

__all__ = ["ModelFile", "ModelPaths", "UnknownFolder"]


class UnknownFolder(KeyError):
    """No model folder kind of that name (nor alias)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model folder {self.name!r}"


@dataclass(frozen=True)
class ModelFile:
    """One file of ``GET /experiment/models/{folder}``."""

    name: str
    path_index: int
    modified: float
    created: float
    size: int


@dataclass(frozen=True)
class _Added:
    kind: str
    path: Path
    is_default: bool


@dataclass(frozen=True)
class _Replaced:
    kind: str
    paths: tuple[Path, ...]
    extensions: frozenset[str] | None


@dataclass(frozen=True)
class _Extended:
    kind: str
    extensions: frozenset[str]


_Change = _Added | _Replaced | _Extended


@dataclass
class _Kind:
    name: str
    extensions: frozenset[str]
    paths: list[Path]


class ModelPaths:
    def __init__(self, registry: ModelFolderRegistry, models_root: Path, base: Path) -> None:
        self._registry = registry
        self._models_root = models_root
        self._base = base
        # Run-time changes, replayed in order over the registered kinds (see _table).
        self._changes: list[_Change] = []
        self._lock = threading.RLock()
        self._kinds: dict[str, _Kind] | None = None
        self._built_from = -1
        self._listings = ListingCache()
        self._names: dict[str, tuple[tuple[object, ...], list[str]]] = {}

    # --- folder table ---

    def _table(self) -> dict[str, _Kind]:
        """Replay defaults + run-time changes; rebuilt when the registry or the changes grew.

        Replaying (instead of editing a table in place) lets extra_model_paths.yaml be read in
        ``configure``, before any plugin has registered its folder kinds.
        """
        with self._lock:
            stamp = len(self._registry.kinds) * 1_000_003 + len(self._changes)
            if self._kinds is not None and self._built_from == stamp:
                return self._kinds
            kinds: dict[str, _Kind] = {}
            for name, kind in self._registry.kinds.items():
                dirs = default_dirs(name, kind.default_subdir, self._models_root, self._base)
                kinds[name] = _Kind(name, kind.extensions, dirs)
            for change in self._changes:
                name = self._registry.canonical(change.kind)
                # The reference makes an unknown name a new kind that accepts every file.
                entry = kinds.setdefault(name, _Kind(name, frozenset(), []))
                _apply(entry, change)
            self._kinds, self._built_from = kinds, stamp
            self._names.clear()
            return kinds

    def _kind(self, folder: str) -> _Kind:
        table = self._table()
        kind = table.get(folder) or table.get(self._registry.canonical(folder))
        if kind is None:
            raise UnknownFolder(folder)
        return kind

    def kinds(self) -> list[str]:
        """Folder kind names in registration order (aliases excluded), as ``GET /models`` lists them."""
        return list(self._table())

    def is_kind(self, folder: str) -> bool:
        """Is ``folder`` a kind's own name? Aliases are not (the HTTP listings refuse them)."""
        return folder in self._table()

    def folder_paths(self, folder: str) -> list[Path]:
        """The folders of a kind (aliases accepted), default ones first; raises UnknownFolder."""
        return list(self._kind(folder).paths)

    def extensions(self, folder: str) -> frozenset[str]:
        return self._kind(folder).extensions

    def all_folder_paths(self) -> dict[str, list[Path]]:
        return {name: list(kind.paths) for name, kind in self._table().items()}

    def add_folder(self, folder: str, path: str | os.PathLike[str], is_default: bool = False) -> None:
        """Add a folder to a kind at run time (an unknown name makes a new kind that accepts every file).

        ``is_default`` puts it first, so it is the folder downloads and new files go to.
        """
        with self._lock:
            self._changes.append(_Added(folder, _absolute(path), is_default))

    def set_folder(
        self, folder: str, paths: Iterable[str | os.PathLike[str]], extensions: Iterable[str] | None = None
    ) -> None:
        """Replace a kind's folders (and its extensions, unless None), creating the kind if new.

        This is the reference's ``folder_names_and_paths[name] = (paths, extensions)`` that
        custom nodes write; an empty ``extensions`` accepts every file.
        """
        exts = None if extensions is None else _normalise_extensions(extensions)
        with self._lock:
            self._changes.append(_Replaced(folder, tuple(_absolute(p) for p in paths), exts))

    def add_extensions(self, folder: str, extensions: Iterable[str]) -> None:
        """Accept more file suffixes in a kind (``.gguf`` for ``diffusion_models``, say)."""
        with self._lock:
            self._changes.append(_Extended(folder, _normalise_extensions(extensions)))

    @property
    def models_root(self) -> Path:
        return self._models_root

    # --- listings ---

    def list_names(self, folder: str) -> list[str]:
        """Sorted relative names of the kind's files across all its folders (aliases accepted)."""
        kind = self._kind(folder)
        listings = [self._listings.get(path) for path in kind.paths]
        key = tuple(listings)
        cached = self._names.get(kind.name)
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a is b for a, b in zip(cached[0], key, strict=True))
        ):
            return list(cached[1])
        names = sorted(
            {name for listing in listings for name in listing.files if matches(name, kind.extensions)}
        )
        self._names[kind.name] = (key, names)
        return list(names)

    def list_files(self, folder: str, extensions: Collection[str] = PT_EXTENSIONS) -> list[ModelFile]:
        """Every matching file with its folder index, size and times (``/experiment/models/{folder}``).

        The reference filters this listing by the torch extensions whatever the kind's own list.
        """
        kind = self._kind(folder)
        exts = frozenset(extensions)
        out: list[ModelFile] = []
        for index, path in enumerate(kind.paths):
            stats: list[FileStat] = self._listings.get(path).stats(exts)
            out.extend(ModelFile(s.name, index, s.modified, s.created, s.size) for s in stats)
        return out

    def get_full_path(self, folder: str, filename: str) -> Path | None:
        """The first existing file called ``filename`` in the kind's folders, or None.

        Aliases are accepted. ``filename`` is checked as a relative name (no ``..``, no absolute
        path); symlinks the administrator placed inside a model folder are followed, as in the
        reference server.
        """
        try:
            kind = self._kind(folder)
            segments = split_relative(filename)
        except (UnknownFolder, UnsafePath):
            return None
        for root in kind.paths:
            candidate = root.joinpath(*segments)
            if candidate.is_file():
                return candidate
        return None

    def get_full_path_or_raise(self, folder: str, filename: str) -> Path:
        found = self.get_full_path(folder, filename)
        if found is None:
            raise FileNotFoundError(f"model {filename!r} not found in folder {folder!r}")
        return found

    def embedding_names(self) -> list[str]:
        """Embedding file names without their extension, relative folders kept."""
        try:
            names = self.list_names("embeddings")
        except UnknownFolder:
            return []
        return [os.path.splitext(name)[0] for name in names]

    def clear_cache(self) -> None:
        """Forget every listing (they are also refreshed whenever a directory's mtime changes)."""
        with self._lock:
            self._listings.clear()
            self._names.clear()


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``"gguf"`` and ``".GGUF"`` both become ``".gguf"``; an empty string is dropped."""
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)


def _apply(entry: _Kind, change: _Change) -> None:
    if isinstance(change, _Replaced):
        entry.paths = list(dict.fromkeys(change.paths))
        if change.extensions is not None:
            entry.extensions = change.extensions
    elif isinstance(change, _Extended):
        # An empty set already accepts everything; adding suffixes must not narrow it.
        if entry.extensions:
            entry.extensions = entry.extensions | change.extensions
    elif change.path in entry.paths:
        if change.is_default:
            entry.paths.remove(change.path)
            entry.paths.insert(0, change.path)
    elif change.is_default:
        entry.paths.insert(0, change.path)
    else:
        entry.paths.append(change.path)
