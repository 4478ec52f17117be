"""Hook implementations of the history plugin; the work lives in the sibling modules."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from kernel.accept import ACCEPT_SCOPES
from plugins.history import options, recorder, recovery, routes
from plugins.history.store import STORE, HistoryStore

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    options.add_options(parser)


@hookimpl
def configure(kernel: Kernel) -> None:
    store = kernel.stash[STORE] = HistoryStore(
        kernel.settings.user_path, options.read_options(kernel).max_items
    )
    # Each group of prompts POST /prompt accepts together is written in one transaction.
    kernel.stash.setdefault(ACCEPT_SCOPES, []).append(store.accept_group)


@hookimpl
def startup(kernel: Kernel) -> None:
    store = kernel.stash[STORE]
    store.open()
    recovery.recover(kernel, store, options.read_options(kernel).max_attempts)


@hookimpl(specname="shutdown", tryfirst=True)
def shutdown_begins(kernel: Kernel) -> None:
    recorder.shutdown_begins(kernel)


# trylast: the executor's own shutdown interrupts the running prompt first, and its final
# event must still find the store open.
@hookimpl(trylast=True)
def shutdown(kernel: Kernel) -> None:
    recorder.shutdown_ends(kernel)
    kernel.stash[STORE].close()


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    recorder.handle(kernel, event)


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes
