"""Hook implementations of the ``frontend_ext`` plugin; the work lives in the sibling modules."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from kernel.events import ClientDisconnected
from plugins.frontend_ext import logs, routes, webroot
from plugins.frontend_ext.packs import PACKS, NodePackRegistry
from plugins.frontend_ext.replacements import REPLACEMENTS, NodeReplacementRegistry

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    webroot.add_options(parser)


@hookimpl
def configure(kernel: Kernel) -> None:
    kernel.stash[webroot.WEB_ROOT] = webroot.resolve_web_root(kernel)
    kernel.stash[PACKS] = NodePackRegistry()
    kernel.stash[REPLACEMENTS] = NodeReplacementRegistry()
    kernel.stash[logs.LOG_BUFFER] = logs.LogBuffer(kernel)


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes


@hookimpl
def register_static_routes(kernel: Kernel) -> Iterable[tuple[str, str]]:
    return webroot.static_routes(kernel)


@hookimpl
def startup(kernel: Kernel, app: web.Application) -> None:
    # Asked here rather than at configure: every plugin has configured itself by now, so a
    # loader of legacy packs knows its packs.
    kernel.hooks.register_node_pack_dirs(kernel, kernel.stash[PACKS].register_for)
    kernel.hooks.register_node_replacements(kernel, kernel.stash[REPLACEMENTS].register_for)
    logs.install(kernel)


@hookimpl
def shutdown(kernel: Kernel) -> None:
    logs.uninstall(kernel)


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    if isinstance(event, ClientDisconnected):
        kernel.stash[logs.LOG_BUFFER].subscribe(event.sid, False)


@hookimpl
def system_stats(kernel: Kernel) -> dict[str, Any]:
    return {"system": {"comfy_package_versions": webroot.package_versions()}}


@hookimpl
def on_prompt(kernel: Kernel, body: dict[str, Any]) -> None:
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if isinstance(prompt, dict):
        kernel.stash[REPLACEMENTS].apply(prompt, kernel.nodes)
