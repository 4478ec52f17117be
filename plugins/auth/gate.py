"""The middleware every request passes: establish who it is, or refuse it.

It runs inside the kernel's own middlewares, so the Host allow-list and the cross-site
(fetch-metadata / Origin) guard have already judged the request; CSRF stays theirs. Without
credentials: a browser asking for a page is sent to the login page, everything else (API routes,
static files, the ``/ws`` upgrade) gets 401 in the reference's ``{"error": ...}`` shape. With
credentials, the request goes on with its principal attached and its ``Comfy-User`` header
replaced by the authenticated user id, so userdata, settings, uploads and packs reading the
header all see the real user.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict

from kernel.identity import Principal
from plugins.auth.state import AuthState, Refusal

log = logging.getLogger("comfykernel.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("comfykernel.auth.principal", Principal)
USER_HEADER = "Comfy-User"
LOGIN_PATH = "/auth/login"
USERS_PATHS = frozenset({"/users", "/api/users"})
# The server's log holds every user's prompt errors and file names: admins only.
ADMIN_PATHS = frozenset({"/internal/logs", "/internal/logs/raw", "/internal/logs/subscribe"})


def unauthorized(message: str = "Authentication required") -> web.Response:
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="comfykernel"'}
    )


def _wants_page(request: web.Request) -> bool:
    """A browser navigating (address bar, link): it should see the login page, not JSON."""
    if request.method not in ("GET", "HEAD"):
        return False
    if request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate":
        return True
    return "text/html" in request.headers.get("Accept", "")


def login_redirect(request: web.Request) -> web.Response:
    target = quote(request.path_qs, safe="/?=&")
    return web.Response(status=303, headers={"Location": f"{LOGIN_PATH}?next={target}"})


def _users_answer(request: web.Request) -> web.Response:
    """``/users`` with auth on: the frontend must not offer its user picker, nor list everyone."""
    if request.method == "GET" or request.method == "HEAD":
        # The single-user answer: the official frontend then skips its user-select screen.
        return web.json_response({"storage": "server", "migrated": True})
    return web.json_response(
        {"error": "Accounts are managed with `comfykernel users` while authentication is on"}, status=403
    )


def _as_user(request: web.Request, principal: Principal) -> web.Request:
    headers = CIMultiDict(request.headers)
    headers.popall(USER_HEADER, None)
    headers[USER_HEADER] = principal.user
    return request.clone(headers=headers)


def make_gate(state: AuthState, public: frozenset[Any]) -> Any:
    """The middleware; ``public`` are the handlers reachable without credentials (login, logout).

    Judged by the route the router matched, not by the path string, so no spelling of a path
    (encoded slashes, dot segments) can reach another handler as if it were the login page.
    """

    @web.middleware
    async def auth_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.handler in public:
            return await handler(request)
        try:
            principal = await state.authenticate(request)
        except Refusal as refusal:
            return refusal.response
        if principal is None:
            if state.options.mode == "password" and _wants_page(request):
                return login_redirect(request)
            return unauthorized()
        if request.path in USERS_PATHS:
            return _users_answer(request)
        if request.path in ADMIN_PATHS and not principal.admin:
            return web.json_response({"error": "Only administrators may read the server log"}, status=403)
        request[PRINCIPAL] = principal
        return await handler(_as_user(request, principal))

    return auth_gate


def request_principal(request: web.Request) -> Principal | None:
    """What the gate established for this request (the plugin's ``identify`` answer)."""
    return request.get(PRINCIPAL)
