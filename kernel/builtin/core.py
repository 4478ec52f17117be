"""Essential plugin ``core``: /features, /system_stats, the base feature flags, node execution."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from kernel.builtin import system

if TYPE_CHECKING:
    from aiohttp import web

    from kernel.app import Kernel


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return system.routes


@hookimpl
def register_feature_flags(kernel: Kernel) -> Mapping[str, Any]:
    return system.base_feature_flags(kernel)


@hookimpl
def system_stats(kernel: Kernel) -> Mapping[str, Any]:
    return system.base_stats(kernel)


@hookimpl(trylast=True)
def wrap_node_execution(call: Callable[[], Any]) -> Any:
    # The innermost implementation: actually run the node. Wrappers surround this call.
    return call()
