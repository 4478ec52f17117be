"""GET /global_subgraphs: subgraph blueprints from packs' ``subgraphs/`` and the blueprints package.

Ids are the sha256 of source + relative path, so they survive restarts and moves of the install;
lookups go through the id table only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.frontend_ext.packs import NodePack
from plugins.frontend_ext.webroot import package_dir

BLUEPRINTS_PACKAGE = "comfyui_subgraph_blueprints"


@dataclass(frozen=True)
class Subgraph:
    source: str  # "custom_node" or "templates"
    name: str
    relative: str
    node_pack: str
    path: Path

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "info": {"node_pack": self.node_pack}}

    def with_data(self) -> dict[str, Any]:
        return {**self.info(), "data": self.path.read_text(encoding="utf-8")}


def _subgraph_id(source: str, relative: str) -> str:
    return hashlib.sha256((source + relative).encode("utf-8")).hexdigest()


def _entries(source: str, node_pack: str, directory: Path, prefix: str) -> list[Subgraph]:
    return [
        Subgraph(source, path.stem, f"{prefix}/{path.name}", node_pack, path)
        for path in sorted(directory.glob("*.json"))
        if path.is_file()
    ]


def build_subgraph_index(packs: list[NodePack]) -> dict[str, Subgraph]:
    found: list[Subgraph] = []
    blueprints = package_dir(BLUEPRINTS_PACKAGE, "blueprints")
    if blueprints is not None:
        found += _entries("templates", BLUEPRINTS_PACKAGE, blueprints, "blueprints")
    for pack in packs:
        directory = pack.directory / "subgraphs"
        if directory.is_dir():
            found += _entries("custom_node", pack.name, directory, f"{pack.name}/subgraphs")
    return {_subgraph_id(s.source, s.relative): s for s in found}
