"""extra_model_paths.yaml: extra folders for model kinds, in the reference server's format.

    comfyui:                      # any section name
        base_path: /srv/comfy     # optional; relative to the yaml file's directory
        is_default: true          # optional; these folders go first (downloads land there)
        checkpoints: models/checkpoints
        loras: |                  # several folders: one per line
            models/loras
            models/more_loras
        custom_nodes: custom_nodes   # kept as the custom_nodes kind, for the compat plugin

Relative folders are joined to ``base_path``, or to the yaml file's directory without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from kernel import StartupError

DEFAULT_FILE_NAME = "extra_model_paths.yaml"


@dataclass(frozen=True)
class ExtraFolder:
    kind: str
    path: Path
    is_default: bool
    source: Path


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


def _lines(source: Path, section: str, key: str, value: object) -> list[str]:
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise StartupError(f"{source}: {section}.{key} must be a folder path or a multi-line string of paths")


def parse_config(source: Path, text: str) -> list[ExtraFolder]:
    """The folders one yaml document adds, in file order; raises StartupError on a malformed file."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StartupError(f"{source}: not valid YAML: {exc}") from exc
    if config is None:
        return []
    if not isinstance(config, dict):
        raise StartupError(f"{source}: expected a mapping of sections at the top level")
    yaml_dir = source.parent
    found: list[ExtraFolder] = []
    for section, conf in config.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise StartupError(f"{source}: section {section!r} must be a mapping")
        conf = dict(conf)
        base: Path | None = None
        raw_base = conf.pop("base_path", None)
        if raw_base is not None:
            if not isinstance(raw_base, str):
                raise StartupError(f"{source}: {section}.base_path must be a string")
            base = Path(_expand(raw_base))
            if not base.is_absolute():
                base = yaml_dir / base
        is_default = _truthy(conf.pop("is_default", False))
        for key, value in conf.items():
            for line in _lines(source, str(section), str(key), value):
                path = Path(_expand(line))
                if not path.is_absolute():
                    path = (base or yaml_dir) / path
                found.append(ExtraFolder(str(key), Path(os.path.normpath(path)), is_default, source))
    return found


def load_configs(files: list[str], base_directory: Path) -> list[ExtraFolder]:
    """``<base>/extra_model_paths.yaml`` when present (the reference reads its install dir), then ``files``."""
    paths: list[Path] = []
    implicit = base_directory / DEFAULT_FILE_NAME
    if implicit.is_file():
        paths.append(implicit)
    paths.extend(Path(f).expanduser().resolve() for f in files)
    found: list[ExtraFolder] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"cannot read extra model paths config {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise StartupError(f"extra model paths config {path} is not UTF-8") from exc
        found.extend(parse_config(path.resolve(), text))
    return found
