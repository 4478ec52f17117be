"""Hook implementations of the ``comfy_compat`` plugin; the work lives in the sibling modules."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from plugins.comfy_compat import loader, manager, reference_calls, shimming
from plugins.comfy_compat.state import STATE, CompatState

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel
    from kernel.plugins import DiscoveredPlugin

log = logging.getLogger("comfykernel.compat")


@hookimpl
def configure(kernel: Kernel) -> None:
    state = kernel.stash[STATE] = CompatState()
    shimming.install(kernel, state)
    # ComfyUI-Manager is imported now (it needs the shims); it starts while packs are discovered.
    manager.configure(kernel)


@hookimpl
def discover_plugins(kernel: Kernel) -> list[DiscoveredPlugin]:
    # The core classes are registered by now and no pack is imported yet: packs call the
    # reference's V3 classes through execute(), so ours answer it before any pack runs.
    reference_calls.equip_registry(kernel)
    return loader.discover(kernel, kernel.stash[STATE])


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    # Packs add their routes to PromptServer.instance.routes while they are imported.
    return kernel.stash[STATE].routes


@hookimpl
def register_middlewares(kernel: Kernel) -> Iterable[Any]:
    return manager.middlewares(kernel)


@hookimpl
def register_feature_flags(kernel: Kernel) -> Mapping[str, Any]:
    # Asked after discovery: the flags packs (ComfyUI-Manager among them) wrote while importing.
    return importlib.import_module("comfy_api.feature_flags").get_server_features()


@hookimpl
def startup(kernel: Kernel, app: web.Application) -> None:
    kernel.stash[STATE].prompt_server.app = app


@hookimpl
def shutdown(kernel: Kernel) -> None:
    manager.shutdown(kernel)
    shimming.uninstall(kernel.stash[STATE])


@hookimpl
def on_prompt(kernel: Kernel, body: dict[str, Any]) -> dict[str, Any] | None:
    for handler in kernel.stash[STATE].prompt_server.on_prompt_handlers:
        try:
            result = handler(body)
        except Exception:
            log.exception("on_prompt handler %r of a custom node pack failed", handler)
            continue
        if isinstance(result, dict):
            body = result
    return body
