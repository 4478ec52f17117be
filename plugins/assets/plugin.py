"""Hook implementations of the assets plugin; the work lives in the sibling modules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from plugins.assets import outputs, routes, setup

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


@hookimpl
def configure(kernel: Kernel) -> None:
    setup.install(kernel)


@hookimpl
def startup(kernel: Kernel) -> None:
    setup.open_store(kernel)


@hookimpl
def shutdown(kernel: Kernel) -> None:
    setup.close(kernel)


@hookimpl
def register_feature_flags(kernel: Kernel) -> Mapping[str, Any]:
    return {"assets": True}


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    outputs.on_event(kernel, event)
