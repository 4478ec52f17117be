"""The plugin object each loaded pack becomes (``legacy:<pack>``): its nodes, web folder, pack folder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kernel import hookimpl

if TYPE_CHECKING:
    from kernel import Kernel
    from plugins.comfy_compat.state import LoadedPack

log = logging.getLogger("comfykernel.compat")


class LegacyPackPlugin:
    def __init__(self, pack: LoadedPack) -> None:
        self.pack = pack

    def __repr__(self) -> str:
        return f"<legacy pack {self.pack.name} from {self.pack.path}>"

    @hookimpl
    def register_nodes(self, register: Callable[..., None], kernel: Kernel) -> None:
        for name, (cls, display_name) in self.pack.nodes.items():
            if not isinstance(name, str) or not name or not isinstance(cls, type):
                # The kernel refuses such an entry at startup; one bad line of one pack must not
                # keep the server down (the reference loads the rest of the pack).
                log.error(
                    "node %r of plugin %s is not a named class (%r); skipped",
                    name,
                    self.pack.plugin_name,
                    cls,
                )
                continue
            existing = kernel.nodes.get(name)
            if existing is not None:
                # The reference never lets a custom node replace one already there.
                log.warning(
                    "node %r of plugin %s is already registered by plugin %s; keeping %s's",
                    name,
                    self.pack.plugin_name,
                    existing.plugin,
                    existing.plugin,
                )
                continue
            register(name, cls, display_name=display_name)

    @hookimpl
    def register_web_extensions(self, register: Callable[..., None], kernel: Kernel) -> None:
        if self.pack.web_dir is None:
            return
        if self.pack.name in kernel.web_extensions.entries:
            other = kernel.web_extensions.entries[self.pack.name].plugin
            log.warning(
                "web directory %r of %s clashes with plugin %s; skipped",
                self.pack.name,
                self.pack.plugin_name,
                other,
            )
            return
        register(self.pack.name, self.pack.web_dir)

    @hookimpl
    def register_node_pack_dirs(self, register: Callable[..., None], kernel: Kernel) -> None:
        if self.pack.directory is not None:
            register(self.pack.name, self.pack.directory)
