"""Essential plugin ``files``: the input/output/temp roots and the upload, view and listing routes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kernel import hookimpl
from kernel.files import dirs
from kernel.files.routes import routes

if TYPE_CHECKING:
    from aiohttp import web

    from kernel.app import Kernel


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes


@hookimpl
def startup(kernel: Kernel) -> None:
    dirs.prepare_directories(kernel.settings)
