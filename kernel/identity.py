"""Who is asking, and whose prompts they may see: the kernel's side of authentication.

The kernel authenticates nobody. A plugin (``plugins/auth``) answers the ``identify`` hook with
a ``Principal`` for each request; without such a plugin every request is anonymous (``None``)
and nothing here changes behaviour. With a principal, the kernel's prompt routes and the
WebSocket fan-out apply one rule: a prompt belongs to the user it was queued as (the
``comfy_user`` of its ``extra_data``), and a principal reaches only its own prompts unless it
is an admin.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from kernel.app import KERNEL_KEY

# The owner of a prompt queued outside multi-user mode (and the reference's default user id).
DEFAULT_OWNER = "default"
_UNSET: Any = object()


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller: ``user`` is the userdata id it acts as."""

    user: str
    admin: bool = False
    # A display name for logs and the UI ("alice"); never used for decisions.
    name: str = ""

    def may_access(self, owner: str) -> bool:
        """May this principal see and manage a prompt (or file) owned by ``owner``?"""
        return self.admin or owner == self.user


_PRINCIPAL_KEY: web.RequestKey[Any] = web.RequestKey("comfykernel.principal", object)


def principal_of(request: web.Request) -> Principal | None:
    """The request's principal (asked of the ``identify`` hook once per request), or None."""
    cached = request.get(_PRINCIPAL_KEY, _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[no-any-return]
    kernel = request.app[KERNEL_KEY]
    found = kernel.hooks.identify(kernel, request)
    principal = found if isinstance(found, Principal) else None
    request[_PRINCIPAL_KEY] = principal
    return principal


def owner_of(extra_data: Any) -> str:
    """The user a prompt was queued as (``POST /prompt`` files it in ``extra_data``)."""
    user = extra_data.get("comfy_user") if isinstance(extra_data, dict) else None
    return user if isinstance(user, str) and user else DEFAULT_OWNER


def may_access(principal: Principal | None, extra_data: Any) -> bool:
    """True without a principal (no authentication plugin); else the ownership rule."""
    return principal is None or principal.may_access(owner_of(extra_data))
