"""The models plugin's hooks: folder kinds, the ``kernel.models`` API, routes and embeddings."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kernel import hookimpl
from plugins.models import folders, routes, setup

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


@hookimpl
def configure(kernel: Kernel) -> None:
    setup.install(kernel)


@hookimpl
def register_model_folders(register: Callable[..., None]) -> None:
    folders.register_all(register)


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes


@hookimpl
def startup(kernel: Kernel) -> None:
    setup.create_default_folders(kernel)


@hookimpl
def register_embeddings(kernel: Kernel) -> Iterable[str]:
    return setup.embedding_names(kernel)
