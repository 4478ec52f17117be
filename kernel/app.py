"""The Kernel object and the aiohttp application built around it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pluggy
from aiohttp import web

from kernel.bus import EventBus
from kernel.events import QueueChanged
from kernel.hooks import Hooks
from kernel.plugins import PluginRecord, build_plugin_manager, register_discovered
from kernel.queue import PromptQueue, QueueBackend
from kernel.registry import ModelFolderRegistry, NodeRegistry, TranslationRegistry, WebExtensionRegistry
from kernel.settings import Settings
from kernel.stash import Stash

log = logging.getLogger("comfykernel")

KERNEL_KEY: web.AppKey[Kernel] = web.AppKey("comfykernel.kernel")
# Paths the reference serves without an /api twin.
_SINGLE_PATH_PREFIXES = ("/api/", "/internal/")


class Kernel:
    """One server's worth of state: settings, plugins, bus, queue and registries.

    Plugins receive it as the ``kernel`` hook argument; aiohttp handlers get it from
    ``request.app[KERNEL_KEY]``. Per-plugin state goes in ``kernel.stash``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        inline_plugins: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.settings = settings or Settings()
        self.pm: pluggy.PluginManager
        self.plugin_records: dict[str, PluginRecord]
        self.pm, self.plugin_records = build_plugin_manager(
            self.settings.plugins, self.settings.disabled, inline_plugins
        )
        self.hooks = Hooks(self.pm)
        self.bus = EventBus()
        self.bus.subscribe(lambda event: self.hooks.on_event(self, event))
        self.stash = Stash()
        self.queue: QueueBackend = PromptQueue(on_change=self._queue_changed)
        self.nodes = NodeRegistry()
        self.model_folders = ModelFolderRegistry()
        self.web_extensions = WebExtensionRegistry()
        self.translations = TranslationRegistry()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Set by the essential ``executor`` plugin: runs prompts, interrupts them.
        self.executor: Any = None
        # Set by the models plugin: ``get_full_path(folder, name) -> Path | None`` and friends
        # (see plugins/models/api.py); None in trimmed deployments without it.
        self.models: Any = None
        # Set by the assets plugin: ``resolve_hash(hash, user)`` and ``register_upload(path, type, user)``
        # (see plugins/assets/api.py); None when that plugin is disabled.
        self.assets: Any = None

        self.hooks.configure(self)
        # After configure, so the providing plugin has read its settings; in-process otherwise.
        backend = self.hooks.provide_queue_backend(self)
        if backend is not None:
            self.queue = backend
        # Before discovery: legacy packs read folder_paths (model folder kinds) while importing.
        self.hooks.register_model_folders(self, self.model_folders.register_for)
        self.hooks.register_nodes(self, self.nodes.register_for)
        # Discovered after the installed plugins registered their nodes, so theirs win clashes.
        discovered = register_discovered(
            self.pm, self.plugin_records, self.hooks.discover_plugins(self), self.settings.disabled
        )
        self.hooks.register_nodes_of(self, self.nodes.register_for, discovered)
        self.hooks.register_web_extensions(self, self.web_extensions.register_for)
        self.hooks.register_translations(self, self.translations.register_for)
        self.feature_flags: dict[str, Any] = self.hooks.register_feature_flags(self)
        # --feature-flag KEY[=VALUE] overrides what plugins announce.
        self.feature_flags.update(self.settings.feature_flags)

    def has_plugin(self, name: str) -> bool:
        """Feature gates are plugin names: is ``name`` enabled in this kernel?"""
        return self.pm.get_plugin(name) is not None and not self.pm.is_blocked(name)

    @property
    def plugin_names(self) -> list[str]:
        return [name for name, rec in self.plugin_records.items() if rec.status == "enabled"]

    def _queue_changed(self, remaining: int) -> None:
        self.bus.publish_threadsafe(QueueChanged(queue_remaining=remaining))


def _route_paths(path: str, api_twin: bool = True) -> list[str]:
    if not api_twin or path.startswith(_SINGLE_PATH_PREFIXES) or path == "/api":
        return [path]
    return [path, "/api" + path]


def build_app(kernel: Kernel) -> web.Application:
    """The aiohttp application: kernel middlewares, plugin routes (dual-path), static mounts last."""
    from kernel.middleware import kernel_middlewares  # keeps `import kernel.app` light

    app = web.Application(
        client_max_size=kernel.settings.max_upload_bytes,
        middlewares=[*kernel_middlewares(kernel), *kernel.hooks.register_middlewares(kernel)],
    )
    app[KERNEL_KEY] = kernel
    for _plugin_name, routes in kernel.hooks.register_routes(kernel):
        for route in routes:
            if not isinstance(route, web.RouteDef):
                # StaticDef and friends register themselves as written.
                route.register(app.router)
                continue
            # ``api_twin=False`` (our own route option) keeps a file-serving route off /api, as the
            # reference's static mounts are.
            kwargs = dict(route.kwargs)
            api_twin = kwargs.pop("api_twin", True)
            for path in _route_paths(route.path, api_twin):
                if route.method == "GET":
                    # add_get also answers HEAD (unless the route says allow_head=False).
                    app.router.add_get(path, route.handler, **kwargs)
                else:
                    app.router.add_route(route.method, path, route.handler, **kwargs)
    for prefix, directory in kernel.hooks.register_static_routes(kernel):
        app.router.add_static(prefix, directory, follow_symlinks=False, append_version=False)

    async def on_startup(app: web.Application) -> None:
        kernel.loop = asyncio.get_running_loop()
        kernel.bus.bind_loop(kernel.loop)
        await kernel.hooks.startup(kernel, app)

    async def on_cleanup(app: web.Application) -> None:
        await kernel.hooks.shutdown(kernel)
        kernel.bus.bind_loop(None)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
