"""Per-kernel state of the comfy_compat plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

from kernel import StashKey


@dataclass
class LoadedPack:
    """One custom-node pack after its import was tried."""

    name: str
    path: Path  # the pack's folder or .py file (for an entry point: its module's folder)
    source: str  # "legacy" (custom_nodes folder) or "entrypoint" (comfyui.custom_nodes)
    module_name: str
    seconds: float = 0.0
    error: str | None = None
    module: ModuleType | None = None
    # name -> (class, display name)
    nodes: dict[str, tuple[type, str | None]] = field(default_factory=dict)
    web_dir: Path | None = None

    @property
    def plugin_name(self) -> str:
        return f"legacy:{self.name}"

    @property
    def directory(self) -> Path | None:
        """The folder holding the pack's locales/, example_workflows/... (None for a single file)."""
        return self.path if self.path.is_dir() else None


@dataclass
class CompatState:
    routes: web.RouteTableDef = field(default_factory=web.RouteTableDef)
    prompt_server: Any = None  # the shims' server.PromptServer, made at install
    packs: list[LoadedPack] = field(default_factory=list)
    # sys.modules entries the shims shadowed, restored when they are removed.
    shadowed: dict[str, ModuleType] = field(default_factory=dict)


STATE = StashKey[CompatState]()
