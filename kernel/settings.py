"""Settings: one msgspec Struct built from CLI flags and the environment.

No module reads flags at import time; the Kernel carries its Settings and plugins read
``kernel.settings`` (their own flags land in ``settings.extra``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import msgspec

ENV_PLUGINS = "COMFYKERNEL_PLUGINS"
ENV_DISABLED = "COMFYKERNEL_DISABLED_PLUGINS"
ENV_PREFIX = "COMFYKERNEL_"


class Settings(msgspec.Struct, kw_only=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1"])
    port: int = 8188
    # None = every discovered plugin; a list = exactly those (plus the essential ones).
    plugins: list[str] | None = None
    disabled: list[str] = msgspec.field(default_factory=list)
    base_directory: str = "."
    output_directory: str | None = None
    input_directory: str | None = None
    temp_directory: str | None = None
    user_directory: str | None = None
    models_directory: str | None = None
    extra_model_paths_config: list[str] = msgspec.field(default_factory=list)
    custom_nodes_dir: list[str] = msgspec.field(default_factory=list)
    enable_cors_header: str | None = None
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    max_upload_size: float = 100.0
    # Pending prompts beyond this make POST /prompt answer 503 (load shedding, not unbounded RAM).
    max_queue_size: int = 10000
    # Runaway-prompt guards (kernel/executor/guards.py): nodes per prompt after expansion,
    # expansion nesting, and the process's RSS ceiling in GB (None = 80% of RAM, 0 = none).
    max_prompt_nodes: int = 100_000
    max_expansion_depth: int = 1_000
    max_memory: float | None = None
    # The server's event loop: "auto" (uvloop when installed), "uvloop" or "asyncio".
    event_loop: str = "auto"
    multi_user: bool = False
    cpu: bool = False
    cache_classic: bool = False
    cache_lru: int = 0
    cache_none: bool = False
    cache_ram: float | None = None
    disable_all_custom_nodes: bool = False
    disable_metadata: bool = False
    preview_method: str = "none"
    preview_size: int = 512
    default_hashing_function: str = "sha256"
    feature_flags: dict[str, Any] = msgspec.field(default_factory=dict)
    verbose: str = "INFO"
    # ComfyUI-Manager (the PyPI ``comfyui_manager`` package), run by the comfy_compat plugin.
    enable_manager: bool = False
    disable_manager_ui: bool = False
    enable_manager_legacy_ui: bool = False
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    # --- derived directories (absolute; the CLI flags override the base-relative defaults) ---

    @property
    def base_path(self) -> Path:
        return Path(self.base_directory).resolve()

    def _dir(self, override: str | None, name: str) -> Path:
        return Path(override).resolve() if override else self.base_path / name

    @property
    def output_path(self) -> Path:
        return self._dir(self.output_directory, "output")

    @property
    def input_path(self) -> Path:
        return self._dir(self.input_directory, "input")

    @property
    def temp_path(self) -> Path:
        return self._dir(self.temp_directory, "temp")

    @property
    def user_path(self) -> Path:
        return self._dir(self.user_directory, "user")

    @property
    def models_path(self) -> Path:
        return self._dir(self.models_directory, "models")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_size * 1024 * 1024)

    @property
    def cache_mode(self) -> str:
        """One of ``none``, ``lru``, ``classic`` or ``ram``: the reference's newest default is the
        RAM-pressure cache, so that is what no flag means (threshold 4 GB free unless given)."""
        if self.cache_none:
            return "none"
        if self.cache_lru:
            return "lru"
        if self.cache_classic:
            return "classic"
        return "ram"


def split_names(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def plugin_selection(plugins: str | None, disabled: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """Resolve ``--plugins``/``--disable`` against ``COMFYKERNEL_PLUGINS``/``..._DISABLED_PLUGINS``.

    CLI values win over the environment. ``all`` (or nothing at all) selects every plugin;
    an empty ``COMFYKERNEL_PLUGINS`` selects none but the essential ones.
    """
    if plugins is None:
        plugins = os.environ.get(ENV_PLUGINS)
    selected: list[str] | None
    if plugins is None or plugins.strip() == "all":
        selected = None
    else:
        names = split_names(plugins)
        selected = None if "all" in names else names
    off = list(disabled or [])
    for item in list(off):
        off.remove(item)
        off.extend(split_names(item))
    off.extend(split_names(os.environ.get(ENV_DISABLED)))
    return selected, off


def parse_feature_flags(items: list[str] | None) -> dict[str, Any]:
    """``KEY[=VALUE]`` items: a bare key is ``true``; true/false and numbers are converted."""
    flags: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        value: Any = True
        if sep:
            low = raw.strip().lower()
            if low in ("true", "false"):
                value = low == "true"
            else:
                try:
                    value = int(raw)
                except ValueError:
                    try:
                        value = float(raw)
                    except ValueError:
                        value = raw
        flags[key.strip()] = value
    return flags


def apply_env_defaults(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """Fill options left at their default from ``COMFYKERNEL_<DEST>`` environment variables."""
    for action in parser._actions:
        dest = action.dest
        if dest in ("help", "plugins", "disable") or not dest or dest == argparse.SUPPRESS:
            continue
        env = os.environ.get(ENV_PREFIX + dest.upper())
        if env is None or getattr(namespace, dest, None) != action.default:
            continue
        if action.nargs == 0:  # store_true / store_false
            setattr(namespace, dest, env.strip().lower() in ("1", "true", "yes", "on"))
            continue
        value: Any = env
        if action.type is not None:
            try:
                value = action.type(env)  # type: ignore[misc]
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                # A usage error like the flag's, not a traceback (exits 2).
                parser.error(f"environment variable {ENV_PREFIX + dest.upper()}={env!r}: {exc}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            parser.error(f"environment variable {ENV_PREFIX + dest.upper()}={env!r}: choose from {choices}")
        if isinstance(action, argparse._AppendAction):
            value = [value]  # a repeatable flag's value is a list; the variable gives one item
        setattr(namespace, dest, value)


def settings_from_namespace(ns: argparse.Namespace, known: set[str]) -> Settings:
    """Build Settings from a parsed namespace; unknown dests (plugin options) go to ``extra``."""
    values = vars(ns).copy()
    selected, off = plugin_selection(values.pop("plugins", None), values.pop("disable", None))
    listen = values.pop("listen", None)
    cors = values.pop("enable_cors_header", None)
    flags = parse_feature_flags(values.pop("feature_flag", None))
    fields = {f for f in Settings.__struct_fields__}
    data: dict[str, Any] = {"plugins": selected, "disabled": off, "feature_flags": flags, "extra": {}}
    if listen is not None:
        data["listen"] = split_names(listen) or ["127.0.0.1"]
    data["enable_cors_header"] = cors
    for key, value in values.items():
        if key in ("command", "func"):
            continue
        if key in fields and key in known:
            if value is not None:
                data[key] = value
        else:
            data["extra"][key] = value
    if data.get("enable_manager_legacy_ui"):
        # As on the reference, the legacy UI flag implies the manager itself.
        data["enable_manager"] = True
    return msgspec.convert(data, Settings)
