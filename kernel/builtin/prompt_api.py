"""Essential plugin ``prompt_api``: /prompt /queue /interrupt /free /object_info /embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kernel import hookimpl
from kernel.builtin import node_routes, prompt_routes

if TYPE_CHECKING:
    from aiohttp import web

    from kernel.app import Kernel


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return [*prompt_routes.routes, *node_routes.routes]
