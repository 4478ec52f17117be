"""Hook implementations of the userdata plugin (the work happens in the sibling modules)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kernel import hookimpl
from plugins.userdata import atomic, routes
from plugins.userdata.settings_store import SETTINGS, SettingsStore
from plugins.userdata.users import USERS, UserStore

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel


@hookimpl
def configure(kernel: Kernel) -> None:
    kernel.stash[USERS] = UserStore(kernel.settings.user_path, kernel.settings.multi_user)
    kernel.stash[SETTINGS] = SettingsStore()


@hookimpl
def startup(kernel: Kernel) -> None:
    # A kill -9 mid-write leaves the previous file intact plus a hidden temp file; sweep those.
    atomic.remove_stale_temps(kernel.settings.user_path)


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes.routes
