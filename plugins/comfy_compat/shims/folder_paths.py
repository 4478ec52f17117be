"""ComfyUI's ``folder_paths`` over the kernel's settings and the models plugin (``kernel.models``).

The directories (``models_dir``, ``output_directory``...) are read from the running kernel on
every access. ``folder_names_and_paths`` is a live mapping over the models plugin's folder table:
packs read it *and* write it (``folder_names_and_paths["ipadapter"] = (paths, exts)``, or
``folder_names_and_paths["tensorrt"][0].append(path)``), and every such write reaches the
server, so ``/models/<kind>``, the loaders and ``get_filename_list`` see the new kind at once.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Collection, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

from kernel.paths import UnsafePath, is_within

log = logging.getLogger("comfykernel.compat")

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
SYSTEM_USER_PREFIX = "__"
# The reference's cache of extension -> content type for filter_files_content_types; a module
# global there too, which packs pre-seed (``webp`` is not in every mimetypes table).
extension_mimetypes_cache: dict[str, str] = {"webp": "image"}

# Read on every access (module __getattr__) so they follow the running kernel's settings.
_DIRECTORY_ATTRS = {
    "base_path": "base_path",
    "models_dir": "models_path",
    "output_directory": "output_path",
    "temp_directory": "temp_path",
    "input_directory": "input_path",
    "user_directory": "user_path",
}


def __getattr__(name: str) -> Any:
    if name in _DIRECTORY_ATTRS:
        return str(getattr(_kernel().settings, _DIRECTORY_ATTRS[name]))
    if name == "folder_names_and_paths":
        return _FolderTable()
    if name == "filename_list_cache":
        return _ListingCache()
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


def _models() -> Any:
    models = _kernel().models
    if models is None:
        raise RuntimeError("folder_paths needs the models plugin, which is disabled")
    return models


# --- folder_names_and_paths: the reference's dict, written through to the models plugin ---------


class _LivePaths(list):  # type: ignore[type-arg]
    """A kind's folder list; changing it in place replaces the kind's folders in the server."""

    def __init__(self, kind: str, paths: Iterable[str]) -> None:
        super().__init__(paths)
        self._kind = kind

    def _push(self) -> None:
        _models().set_folder(self._kind, list(self))


def _writing(name: str) -> Any:
    base = getattr(list, name)

    def method(self: _LivePaths, *args: Any, **kwargs: Any) -> Any:
        result = base(self, *args, **kwargs)
        self._push()
        return result

    method.__name__ = name
    return method


for _name in (
    "append",
    "extend",
    "insert",
    "remove",
    "pop",
    "clear",
    "sort",
    "reverse",
    "__setitem__",
    "__delitem__",
    "__iadd__",
):
    setattr(_LivePaths, _name, _writing(_name))


class _LiveExtensions(set):  # type: ignore[type-arg]
    """A kind's accepted suffixes; ``add``/``update``... change what the kind lists in the server."""

    def __init__(self, kind: str, extensions: Iterable[str]) -> None:
        super().__init__(extensions)
        self._kind = kind

    def _push(self) -> None:
        models = _models()
        models.set_folder(self._kind, models.folder_paths(self._kind), set(self))


def _set_writing(name: str) -> Any:
    base = getattr(set, name)

    def method(self: _LiveExtensions, *args: Any, **kwargs: Any) -> Any:
        result = base(self, *args, **kwargs)
        self._push()
        return result

    method.__name__ = name
    return method


for _name in ("add", "update", "discard", "remove", "pop", "clear", "__ior__", "__isub__", "__iand__"):
    setattr(_LiveExtensions, _name, _set_writing(_name))


class _FolderTable(MutableMapping[str, tuple[list[str], set[str]]]):
    """``folder_names_and_paths``: kind -> (folders, extensions), always the server's current table.

    Writing a key replaces (or creates) that kind; deleting one empties its folders, as the
    models plugin never forgets a kind other plugins registered.
    """

    def __getitem__(self, name: str) -> tuple[list[str], set[str]]:
        models = _models()
        if not isinstance(name, str) or not models.is_kind(name):
            raise KeyError(name)
        paths = [str(p) for p in models.folder_paths(name)]
        return (_LivePaths(name, paths), _LiveExtensions(name, models.extensions(name)))

    def __setitem__(self, name: str, value: tuple[Iterable[str], Iterable[str]]) -> None:
        try:
            paths, extensions = value
        except (TypeError, ValueError):
            raise TypeError(
                f"folder_names_and_paths[{name!r}] must be a (folders, extensions) pair, not {value!r}"
            ) from None
        _models().set_folder(name, [os.fspath(p) for p in paths], set(extensions or ()))

    def __delitem__(self, name: str) -> None:
        self[name]  # noqa: B018 - raises KeyError for an unknown kind, as a dict would
        _models().set_folder(name, [])

    def __iter__(self) -> Iterator[str]:
        return iter(_models().kinds())

    def __len__(self) -> int:
        return len(_models().kinds())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _models().is_kind(name)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _ListingCache(dict):  # type: ignore[type-arg]
    """``filename_list_cache``: packs clear it (or delete a key) to force a fresh listing."""

    def _forget(self) -> None:
        _models().clear_cache()

    def clear(self) -> None:
        self._forget()

    def pop(self, key: Any, *default: Any) -> Any:
        self._forget()
        return default[0] if default else None

    def __delitem__(self, key: Any) -> None:
        self._forget()


class CacheHelper:
    """The reference's opt-in listing cache (``with folder_paths.cache_helper:``).

    Listings here are already cached until a folder's modification time changes, so entering
    the block only has to keep the reference's interface.
    """

    def __init__(self) -> None:
        self.cache: dict[str, tuple[list[str], dict[str, float], float]] = {}
        self.active = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.cache.get(key, default) if self.active else default

    def set(self, key: str, value: tuple[list[str], dict[str, float], float]) -> None:
        if self.active:
            self.cache[key] = value

    def clear(self) -> None:
        self.cache.clear()

    def __enter__(self) -> CacheHelper:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.clear()


# One per process, as in the reference (packs import the object itself).
cache_helper = CacheHelper()


# --- model folders -------------------------------------------------------------------------------


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def get_folder_paths(folder_name: str) -> list[str]:
    """The kind's folders (default first); an unknown kind raises KeyError as the reference's dict does."""
    return [str(p) for p in _models().folder_paths(map_legacy(folder_name))]


def get_filename_list(folder_name: str) -> list[str]:
    return list(_models().list_names(map_legacy(folder_name)))


def get_full_path(folder_name: str, filename: str) -> str | None:
    try:
        path = _models().get_full_path(map_legacy(folder_name), filename)
    except (KeyError, UnsafePath):
        return None
    return None if path is None else str(path)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Add a folder to a kind (first when ``is_default``); an unknown kind is created, accepting every file."""
    _models().add_folder(map_legacy(folder_name), full_folder_path, is_default=is_default)


def recursive_search(
    directory: str, excluded_dir_names: list[str] | None = None
) -> tuple[list[str], dict[str, float]]:
    """(relative file names under ``directory``, {folder: mtime}) as the reference's listing helper."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    dirs: dict[str, float] = {}
    for root, subdirs, names in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        try:
            dirs[root] = os.path.getmtime(root)
        except OSError:
            continue
        files.extend(os.path.relpath(os.path.join(root, n), directory) for n in names)
    return files, dirs


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    """Sorted ``files`` whose lower-case suffix is in ``extensions`` (an empty collection keeps all)."""
    return sorted(f for f in files if len(extensions) == 0 or os.path.splitext(f)[-1].lower() in extensions)


def filter_files_content_types(files: Iterable[str], content_types: Collection[str]) -> list[str]:
    """The files whose MIME major type (``image``, ``video``, ``audio``...) is in ``content_types``."""
    result = []
    for file in files:
        extension = file.split(".")[-1]
        content_type = extension_mimetypes_cache.get(extension)
        if content_type is None:
            mime, _ = mimetypes.guess_type(file, strict=False)
            if not mime:
                continue
            content_type = extension_mimetypes_cache[extension] = mime.split("/")[0]
        if content_type in content_types:
            result.append(file)
    return result


# --- directories -----------------------------------------------------------------------------------


def get_output_directory() -> str:
    return str(_kernel().settings.output_path)


def get_temp_directory() -> str:
    return str(_kernel().settings.temp_path)


def get_input_directory() -> str:
    return str(_kernel().settings.input_path)


def get_user_directory() -> str:
    return str(_kernel().settings.user_path)


def get_system_user_directory(name: str = "system") -> str:
    """``<user>/__<name>``: storage for server-internal data that no HTTP user can reach."""
    if not name or not isinstance(name, str):
        raise ValueError("System user name cannot be empty")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"Invalid system user name: '{name}'")
    if name.startswith("_"):
        raise ValueError("System user name should not start with underscore")
    return os.path.join(get_user_directory(), SYSTEM_USER_PREFIX + name)


def get_public_user_directory(user_id: str) -> str | None:
    """``<user>/<user_id>``, or None for an empty id or a system user (``__`` prefix)."""
    if not user_id or not isinstance(user_id, str) or user_id.startswith(SYSTEM_USER_PREFIX):
        return None
    return os.path.join(get_user_directory(), user_id)


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": get_output_directory, "temp": get_temp_directory, "input": get_input_directory}.get(
        type_name, lambda: None
    )()


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` → ``("x.png", output dir)``; no annotation → ``(name, None)``."""
    for suffix, directory in (
        (" [output]", get_output_directory),
        (" [input]", get_input_directory),
        (" [temp]", get_temp_directory),
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)], directory()
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    base = base or default_dir or get_input_directory()
    return os.path.join(base, name)


def exists_annotated_filepath(name: str) -> bool:
    name, base = annotated_filepath(name)
    return os.path.exists(os.path.join(base or get_input_directory(), name))


def get_input_subfolders() -> list[str]:
    """Every folder under the input directory, relative and ``/``-separated, sorted."""
    root = Path(get_input_directory())
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


def _substitute(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def _next_counter(folder: str, filename: str, prefix_length: int) -> int:
    """One past the largest ``<filename>_<n>...`` counter in ``folder`` (1 when there is none)."""
    best = 0
    found = False
    for entry in os.listdir(folder):
        head = entry[: prefix_length + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1:] != "_":
            continue
        try:
            digits = int(entry[prefix_length + 1 :].split("_")[0])
        except ValueError:
            digits = 0  # the reference counts such a file as 0, so the next one is still 1
        best = max(best, digits)
        found = True
    return best + 1 if found else 1


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """(folder, file stem, next counter, subfolder, prefix after ``%width%``-style substitution).

    Files are expected as ``<stem>_<counter>_.<ext>``; the counter continues after the largest one
    already in the folder. A prefix that leaves ``output_dir`` raises ValueError.
    """
    if "%" in filename_prefix:
        filename_prefix = _substitute(filename_prefix, image_width, image_height)
    subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if not is_within(output_dir, os.path.abspath(folder)):
        raise ValueError(f"Saving image outside the output folder is not allowed: {filename_prefix!r}")
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
        return folder, filename, 1, subfolder, filename_prefix
    prefix_length = len(os.path.basename(filename_prefix))
    return folder, filename, _next_counter(folder, filename, prefix_length), subfolder, filename_prefix
