"""``/auth/login``, ``/auth/logout`` and ``/auth/me`` (each also under ``/api``).

Login accepts the page's form or JSON (``{"username", "password"}``); a form is answered with a
redirect or the page again, JSON with JSON. Both set the session cookie (HttpOnly,
SameSite=Strict, Secure over TLS or with ``--tls-proxy``). The form posts same-origin, so the
kernel's cross-site guard is its CSRF protection (a forged cross-site login is refused there).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from aiohttp import web

from kernel import KERNEL_KEY
from plugins.auth.gate import request_principal, unauthorized
from plugins.auth.page import login_page, logout_page
from plugins.auth.sessions import COOKIE_NAME
from plugins.auth.state import AUTH, AuthState, Refusal

log = logging.getLogger("comfykernel.auth")
routes = web.RouteTableDef()

MAX_FIELD = 1024


def _state(request: web.Request) -> AuthState:
    return request.app[KERNEL_KEY].stash[AUTH]


def safe_next(value: Any) -> str:
    """A same-site path to return to after login; anything else (``//evil``, URLs) becomes ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ch in value for ch in "\r\n\\") or len(value) > 2048:
        return "/"
    return value


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", **(headers or {})}
    return web.Response(text=text, status=status, content_type="text/html", headers=all_headers)


def _set_cookie(state: AuthState, request: web.Request, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=max(1, math.ceil(state.options.session_seconds)),  # 0 would delete it at once
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or state.options.tls_proxy,
    )


def _clear_cookie(state: AuthState, request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        COOKIE_NAME,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or state.options.tls_proxy,
    )


@routes.get("/auth/login")
async def login_form(request: web.Request) -> web.Response:
    state = _state(request)
    if state.options.mode != "password":
        return web.json_response(
            {"error": "Logins are handled by the proxy in front of this server"}, status=404
        )
    return _html(login_page(safe_next(request.query.get("next", "/"))))


async def _credentials(request: web.Request) -> tuple[bool, str, str, str]:
    """(came from the form, name, password, next) of a login request; ValueError when unusable."""
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ValueError("Request body must be valid JSON") from None
        if not isinstance(body, dict):
            raise ValueError("Request body must be a JSON object")
        form, fields = False, body
    else:
        form, fields = True, dict(await request.post())
    name, password = fields.get("username"), fields.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name.strip() or not password:
        raise ValueError("username and password are required")
    if len(name) > MAX_FIELD or len(password) > MAX_FIELD:
        raise ValueError("username or password too long")
    return form, name.strip(), password, safe_next(fields.get("next", "/"))


@routes.post("/auth/login")
async def login(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if state.options.mode != "password":
        return web.json_response(
            {"error": "Logins are handled by the proxy in front of this server"}, status=404
        )
    try:
        form, name, password, next_path = await _credentials(request)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    try:
        principal = await state.login(request, name, password)
    except Refusal as refusal:
        if not form:
            return refusal.response
        page = login_page(next_path, "Too many failed attempts. Try again later.", name)
        return _html(page, status=429, headers={"Retry-After": refusal.response.headers["Retry-After"]})
    if principal is None:
        if not form:
            return unauthorized("Wrong user name or password")
        return _html(login_page(next_path, "Wrong user name or password.", name), status=401)
    # Rotate: whatever session the browser carried ends, a new value is issued.
    old = request.cookies.get(COOKIE_NAME)
    if old:
        state.sessions.end(old)
    account = state.credentials.account(principal.user)
    value = state.sessions.create(principal.user, account.generation if account else 0)
    log.info("user %s logged in", principal.user)
    response: web.StreamResponse
    if form:
        response = web.Response(status=303, headers={"Location": next_path, "Cache-Control": "no-store"})
    else:
        response = web.json_response(
            {"user": principal.user, "name": principal.name, "admin": principal.admin}
        )
    _set_cookie(state, request, response, value)
    return response


@routes.get("/auth/logout")
async def logout_form(request: web.Request) -> web.Response:
    state = _state(request)
    cookie = request.cookies.get(COOKIE_NAME)
    principal = state.from_session(cookie) if cookie else None
    if principal is None:
        return web.Response(status=303, headers={"Location": "/auth/login"})
    return _html(logout_page(principal.name or principal.user))


@routes.post("/auth/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:
        state.sessions.end(cookie)
    response: web.StreamResponse
    if request.content_type == "application/x-www-form-urlencoded":
        response = web.Response(status=303, headers={"Location": "/auth/login"})
    else:
        response = web.json_response({"logged_out": True})
    _clear_cookie(state, request, response)
    return response


@routes.get("/auth/me")
async def me(request: web.Request) -> web.Response:
    principal = request_principal(request)
    if principal is None:  # the gate lets no one here without one
        return unauthorized()
    return web.json_response(
        {
            "user": principal.user,
            "name": principal.name,
            "admin": principal.admin,
            "mode": _state(request).options.mode,
        }
    )


# Reachable without credentials: the login page (its styles are inline) and logout.
PUBLIC_HANDLERS = frozenset({login_form, login, logout_form, logout})
