"""Registries the kernel owns, filled through ``register_*`` hooks, with provenance.

Every entry remembers which plugin registered it; a name registered twice is a typed error
naming both plugins (datasette's rule: never silently overwrite or rename).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.errors import StartupError


@dataclass(frozen=True)
class NodeEntry:
    name: str
    cls: type
    plugin: str
    display_name: str | None = None


class NodeRegistry:
    def __init__(self) -> None:
        self._nodes: dict[str, NodeEntry] = {}

    def register(self, plugin: str, name: str, cls: type, display_name: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise StartupError(f"plugin {plugin} registered a node with an invalid name {name!r}")
        if not isinstance(cls, type):
            raise StartupError(f"plugin {plugin} registered node {name!r} with {cls!r}, which is not a class")
        if name in self._nodes:
            other = self._nodes[name].plugin
            raise StartupError(
                f"duplicate node name {name!r}: registered by plugin {other} and plugin {plugin}"
            )
        self._nodes[name] = NodeEntry(name, cls, plugin, display_name)

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(name: str, cls: type, display_name: str | None = None) -> None:
            self.register(plugin, name, cls, display_name)

        return register

    def get(self, name: str) -> NodeEntry | None:
        return self._nodes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def names(self) -> list[str]:
        return list(self._nodes)


@dataclass(frozen=True)
class ModelFolderKind:
    name: str
    extensions: frozenset[str]
    plugin: str
    aliases: tuple[str, ...] = ()
    default_subdir: str | None = None


class ModelFolderRegistry:
    """Folder kinds (``checkpoints``, ``loras``...) and their aliases; paths live in the models plugin."""

    def __init__(self) -> None:
        self.kinds: dict[str, ModelFolderKind] = {}
        self.aliases: dict[str, str] = {}

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(
            name: str,
            extensions: Iterable[str] = (),
            aliases: Iterable[str] = (),
            default_subdir: str | None = None,
        ) -> None:
            if name in self.kinds or name in self.aliases:
                owner = self.kinds[self.canonical(name)].plugin
                raise StartupError(
                    f"duplicate model folder {name!r}: registered by plugin {owner} and plugin {plugin}"
                )
            exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
            self.kinds[name] = ModelFolderKind(name, exts, plugin, tuple(aliases), default_subdir)
            for alias in aliases:
                self.aliases[alias] = name

        return register

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def get(self, name: str) -> ModelFolderKind | None:
        return self.kinds.get(self.canonical(name))


@dataclass(frozen=True)
class WebExtension:
    name: str
    directory: Path
    plugin: str


@dataclass
class WebExtensionRegistry:
    entries: dict[str, WebExtension] = field(default_factory=dict)

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(name: str, directory: str | Path) -> None:
            if name in self.entries:
                raise StartupError(
                    f"duplicate web extension {name!r}: registered by plugin {self.entries[name].plugin} and plugin {plugin}"
                )
            self.entries[name] = WebExtension(name, Path(directory), plugin)

        return register


def deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
    return into


@dataclass
class TranslationRegistry:
    languages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(lang: str, mapping: dict[str, Any]) -> None:
            deep_merge(self.languages.setdefault(lang, {}), mapping)

        return register
