"""The typed facade over ``pm.hook``: the only module that calls hooks.

Registration hooks are called plugin by plugin so that everything registered is stamped with
the name of the plugin that registered it.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web

    from kernel.app import Kernel
    from kernel.identity import Principal
    from kernel.plugins import DiscoveredPlugin
    from kernel.queue import QueueBackend

log = logging.getLogger("comfykernel.hooks")


async def await_me_maybe(value: Any) -> Any:
    """Plugins may answer with a value, a coroutine, or a callable returning either."""
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


class Hooks:
    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._on_event_impls: list[Any] | None = None
        self._on_event_calls: list[tuple[str, Callable[..., Any], bool, bool]] = []

    # --- helpers ---

    def _impls(self, hook_name: str) -> Iterator[tuple[str, Any]]:
        """Implementations in pluggy's call order (last registered first), wrappers skipped.

        Registration hooks are called one implementation at a time so that what each plugin
        registers is stamped with its name; wrappers have no meaning there.
        """
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if not (impl.hookwrapper or impl.wrapper):
                yield impl.plugin_name, impl

    @staticmethod
    def _call(impl: Any, kwargs: dict[str, Any]) -> Any:
        return impl.function(**{name: kwargs[name] for name in impl.argnames})

    def _each(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        for plugin_name, impl in self._impls(hook_name):
            yield plugin_name, self._call(impl, kwargs)

    def _each_bound(
        self, hook_name: str, register_for: Callable[[str], Callable[..., None]], **kw: Any
    ) -> None:
        for plugin_name, impl in self._impls(hook_name):
            self._call(impl, dict(kw, register=register_for(plugin_name)))

    def implementations(self) -> dict[str, list[str]]:
        """Every hook with the plugins implementing it (for ``comfykernel plugins hooks``)."""
        return {
            name: [impl.plugin_name for impl in getattr(self.pm.hook, name).get_hookimpls()]
            for name in sorted(vars(self.pm.hook))
            if not name.startswith("_")
        }

    # --- CLI ---

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        self.pm.hook.add_options(parser=parser)

    def register_commands(self, subparsers: Any) -> None:
        self.pm.hook.register_commands(subparsers=subparsers)

    # --- lifecycle ---

    def configure(self, kernel: Kernel) -> None:
        self.pm.hook.configure(kernel=kernel)

    def provide_queue_backend(self, kernel: Kernel) -> QueueBackend | None:
        return self.pm.hook.provide_queue_backend(kernel=kernel)

    async def startup(self, kernel: Kernel, app: web.Application) -> None:
        for result in self.pm.hook.startup(kernel=kernel, app=app):
            await await_me_maybe(result)

    async def shutdown(self, kernel: Kernel) -> None:
        # Every plugin gets its turn even when an earlier one fails.
        for plugin_name, impl in self._impls("shutdown"):
            try:
                await await_me_maybe(self._call(impl, {"kernel": kernel}))
            except Exception:
                log.exception("shutdown hook of plugin %s failed", plugin_name)

    # --- registries ---

    def register_nodes(self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]) -> None:
        self._each_bound("register_nodes", register_for, kernel=kernel)

    def register_nodes_of(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]], plugins: list[str]
    ) -> None:
        """``register_nodes`` asked of the named plugins only (those just discovered), in that order."""
        impls = {name: impl for name, impl in self._impls("register_nodes") if name in set(plugins)}
        for plugin_name in plugins:
            if plugin_name in impls:
                self._call(impls[plugin_name], {"kernel": kernel, "register": register_for(plugin_name)})

    def discover_plugins(self, kernel: Kernel) -> list[DiscoveredPlugin]:
        found: list[DiscoveredPlugin] = []
        for _, result in self._each("discover_plugins", kernel=kernel):
            found.extend(result or ())
        return found

    def register_model_folders(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]
    ) -> None:
        self._each_bound("register_model_folders", register_for, kernel=kernel)

    def register_web_extensions(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]
    ) -> None:
        self._each_bound("register_web_extensions", register_for, kernel=kernel)

    def register_translations(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]
    ) -> None:
        self._each_bound("register_translations", register_for, kernel=kernel)

    def register_routes(self, kernel: Kernel) -> list[tuple[str, list[web.AbstractRouteDef]]]:
        return [
            (name, list(result)) for name, result in self._each("register_routes", kernel=kernel) if result
        ]

    def register_static_routes(self, kernel: Kernel) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for _, result in self._each("register_static_routes", kernel=kernel):
            pairs.extend(result or ())
        return pairs

    def register_middlewares(self, kernel: Kernel) -> list[Any]:
        found: list[Any] = []
        for _, result in self._each("register_middlewares", kernel=kernel):
            found.extend(result or ())
        return found

    def register_feature_flags(self, kernel: Kernel) -> dict[str, Any]:
        flags: dict[str, Any] = {}
        # Reverse pluggy's LIFO order so the first-registered (essential) flags come first and
        # plugins registered later may override them.
        for _, result in reversed(list(self._each("register_feature_flags", kernel=kernel))):
            flags.update(result or {})
        return flags

    # --- runtime ---

    def on_prompt(self, kernel: Kernel, body: dict[str, Any]) -> dict[str, Any]:
        for plugin_name, impl in self._impls("on_prompt"):
            try:
                result = self._call(impl, {"kernel": kernel, "body": body})
            except Exception:
                log.exception("on_prompt hook of plugin %s failed; skipped", plugin_name)
                continue
            if isinstance(result, dict):
                body = result
        return body

    def on_event(self, kernel: Kernel, event: Any) -> None:
        # Called for every event (dozens per executed prompt, on the loop thread): the
        # implementations are prepared once per set of registered plugins, not per call.
        impls = self.pm.hook.on_event.get_hookimpls()
        if impls != self._on_event_impls:
            self._on_event_impls = impls
            self._on_event_calls = [
                (plugin_name, impl.function, "kernel" in impl.argnames, "event" in impl.argnames)
                for plugin_name, impl in self._impls("on_event")
            ]
        for plugin_name, function, wants_kernel, wants_event in self._on_event_calls:
            try:
                if wants_kernel and wants_event:
                    function(kernel=kernel, event=event)
                else:
                    function(
                        **({"kernel": kernel} if wants_kernel else {}),
                        **({"event": event} if wants_event else {}),
                    )
            except Exception:
                log.exception("on_event hook of plugin %s failed", plugin_name)

    def wrap_node_execution(
        self, kernel: Kernel, node_id: str, class_type: str, call: Callable[[], Any]
    ) -> Any:
        return self.pm.hook.wrap_node_execution(
            kernel=kernel, node_id=node_id, class_type=class_type, call=call
        )

    def system_stats(self, kernel: Kernel) -> list[dict[str, Any]]:
        return [dict(r) for _, r in reversed(list(self._each("system_stats", kernel=kernel))) if r]

    def on_free(self, kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
        self.pm.hook.on_free(kernel=kernel, unload_models=unload_models, free_memory=free_memory)

    def register_embeddings(self, kernel: Kernel) -> list[str]:
        names: set[str] = set()
        for _, result in self._each("register_embeddings", kernel=kernel):
            names.update(result or ())
        return sorted(names)

    # --- who is asking ---

    def identify(self, kernel: Kernel, request: web.Request) -> Principal | None:
        return self.pm.hook.identify(kernel=kernel, request=request)

    def may_read_file(self, kernel: Kernel, request: web.Request, folder_type: str, path: Path) -> bool:
        answers = self.pm.hook.may_read_file(
            kernel=kernel, request=request, folder_type=folder_type, path=path
        )
        return all(answer is not False for answer in answers)

    # --- web UI registries (asked by the frontend_ext plugin) ---

    def register_node_replacements(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]
    ) -> None:
        self._each_bound("register_node_replacements", register_for, kernel=kernel)

    def register_node_pack_dirs(
        self, kernel: Kernel, register_for: Callable[[str], Callable[..., None]]
    ) -> None:
        self._each_bound("register_node_pack_dirs", register_for, kernel=kernel)
