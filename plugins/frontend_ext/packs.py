"""The registry of node-pack directories (``register_node_pack_dirs``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kernel import StartupError, StashKey


@dataclass(frozen=True)
class NodePack:
    name: str
    directory: Path
    plugin: str


@dataclass
class NodePackRegistry:
    entries: dict[str, NodePack] = field(default_factory=dict)

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(name: str, directory: str | Path) -> None:
            if not isinstance(name, str) or not name or "/" in name or "\\" in name:
                raise StartupError(f"plugin {plugin} registered a node pack with an invalid name {name!r}")
            if name in self.entries:
                raise StartupError(
                    f"duplicate node pack {name!r}: registered by plugin "
                    f"{self.entries[name].plugin} and plugin {plugin}"
                )
            self.entries[name] = NodePack(name, Path(directory), plugin)

        return register

    def sorted(self) -> list[NodePack]:
        return [self.entries[name] for name in sorted(self.entries)]


PACKS = StashKey[NodePackRegistry]()
