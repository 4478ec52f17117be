"""ComfyUI's ``folder_paths`` over the kernel's settings and the models plugin (``kernel.models``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

from kernel.paths import UnsafePath, is_within

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

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
        # A snapshot: change folders through add_model_folder_path, which reaches the registry.
        return {kind: (get_folder_paths(kind), set(_models().extensions(kind))) for kind in _models().kinds()}
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


def _models() -> Any:
    models = _kernel().models
    if models is None:
        raise RuntimeError("folder_paths needs the models plugin, which is disabled")
    return models


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def get_folder_paths(folder_name: str) -> list[str]:
    return [str(p) for p in _models().folder_paths(folder_name)]


def get_filename_list(folder_name: str) -> list[str]:
    return list(_models().list_names(folder_name))


def get_full_path(folder_name: str, filename: str) -> str | None:
    try:
        path = _models().get_full_path(folder_name, filename)
    except (KeyError, UnsafePath):
        return None
    return None if path is None else str(path)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    _models().add_folder(folder_name, full_folder_path, is_default=is_default)


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


def get_output_directory() -> str:
    return str(_kernel().settings.output_path)


def get_temp_directory() -> str:
    return str(_kernel().settings.temp_path)


def get_input_directory() -> str:
    return str(_kernel().settings.input_path)


def get_user_directory() -> str:
    return str(_kernel().settings.user_path)


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
    return os.path.exists(get_annotated_filepath(name))


def get_input_subfolders() -> list[str]:
    root = Path(get_input_directory())
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """(folder, file stem, next counter, subfolder, prefix) for saving under ``output_dir``."""
    prefix = filename_prefix.replace("%width%", str(image_width)).replace("%height%", str(image_height))
    subfolder, filename = os.path.split(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if not is_within(output_dir, folder):
        raise ValueError(f"Saving image outside the output folder is not allowed: {prefix!r}")
    pattern = re.compile(re.escape(filename) + r"_(\d+)_?\.")
    counter = 0
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                counter = max(counter, int(match.group(1)))
    os.makedirs(folder, exist_ok=True)
    return folder, filename, counter + 1, subfolder, prefix
