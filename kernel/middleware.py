"""The kernel's own middlewares: error shaping, host allow-list, cross-site writes, CORS, caching.

Order (outermost first): errors → host check → CORS or cross-site check → body size →
cache headers → plugin middlewares → handler.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from kernel.app import KERNEL_KEY

if TYPE_CHECKING:
    from kernel.app import Kernel

log = logging.getLogger("comfykernel.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _is_loopback(address: str) -> bool:
    if address in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None]:
    """``example.com:8188`` / ``[::1]:80`` → (host, port); hosts lower-cased, brackets removed."""
    try:
        parts = urlsplit("//" + value.strip())
    except ValueError:  # an unbalanced "[" — names no host, so it matches nothing allowed
        return "", None
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port


def _raised_by_json_decoder(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == "json.decoder":
            return True
        tb = tb.tb_next
    return False


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """4xx as JSON (never a traceback); unexpected exceptions → logged 500 with a bland body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason
        if exc.status == 413:
            kernel = request.app[KERNEL_KEY]
            message = f"Request body too large: the limit is {kernel.settings.max_upload_size:g} MB"
        response = json_error(exc.status, message)
        # Keep what inner layers put on the exception: Allow on a 405, CORS headers.
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers.add(name, value)
        return response
    except (json.JSONDecodeError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        # Handlers that parse bodies without guarding would otherwise answer 500.
        return json_error(400, f"Invalid JSON body: {exc}")
    except OSError:
        # aiohttp's static handler lets the OS's refusals (a name too long, a symlink loop)
        # escape; no file can have such a name, so under a static mount it is a 404.
        if isinstance(request.match_info.route.resource, web.StaticResource):
            return json_error(404, "Not Found")
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "Internal server error")
    except RecursionError as exc:
        if _raised_by_json_decoder(exc):  # a body like [[[[…]]]] given to request.json()
            return json_error(400, "Invalid JSON body: nested too deeply")
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "Internal server error")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "Internal server error")


def host_check_middleware(kernel: Kernel) -> Any:
    """Refuse foreign Host headers while listening on loopback only (defeats DNS rebinding)."""
    allowed = LOOPBACK_NAMES | {h.lower() for h in kernel.settings.allowed_hosts}
    loopback_only = all(_is_loopback(a) for a in kernel.settings.listen)

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if loopback_only:
            raw = request.headers.get("Host")
            if raw is not None:
                host, _ = _split_host(raw)
                if host not in allowed:
                    log.warning("refused request with Host %r", raw)
                    return json_error(403, f"Host {raw!r} is not allowed")
        return await handler(request)

    return host_check


@web.middleware
async def cross_site_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stop drive-by requests from other web pages (used when CORS is off)."""
    if request.method == "OPTIONS":
        return web.Response(status=200)
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin.strip().lower() == "null":
            return json_error(403, "Cross-origin request refused (Origin: null)")
        try:
            origin_parts = urlsplit(origin)
        except ValueError:
            return json_error(403, "Cross-origin request refused (malformed Origin)")
        o_host, o_port = _split_host(origin_parts.netloc)
        h_host, h_port = _split_host(request.headers.get("Host", request.host))
        if o_port is None and origin_parts.scheme in ("http", "https"):
            o_port = 443 if origin_parts.scheme == "https" else 80
        if h_port is None:
            h_port = 443 if request.secure else 80
        if o_host != h_host or o_port != h_port:
            log.warning("refused %s %s from Origin %s", request.method, request.path, origin)
            return json_error(403, "Cross-origin request refused")
    if request.method not in SAFE_METHODS:
        if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
            return json_error(403, "Cross-site request refused")
    return await handler(request)


def cors_middleware(origin: str) -> Any:
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
        "Access-Control-Allow-Headers": "Content-Type, Authorization, Comfy-User",
        "Access-Control-Allow-Credentials": "true",
    }

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=200)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
                response.headers.update(headers)
                raise
        response.headers.update(headers)
        return response

    return cors


def body_size_middleware(kernel: Kernel) -> Any:
    """Refuse declared oversize bodies before reading them (aiohttp enforces the rest)."""
    limit = kernel.settings.max_upload_bytes

    @web.middleware
    async def body_size(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > limit:
            return json_error(
                413, f"Request body too large: the limit is {kernel.settings.max_upload_size:g} MB"
            )
        return await handler(request)

    return body_size


@web.middleware
async def cache_control_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path.endswith((".js", ".css")) and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-cache"
    return response


def kernel_middlewares(kernel: Kernel) -> list[Any]:
    chain: list[Any] = [error_middleware, host_check_middleware(kernel)]
    if kernel.settings.enable_cors_header:
        chain.append(cors_middleware(kernel.settings.enable_cors_header))
    else:
        chain.append(cross_site_middleware)
    chain += [body_size_middleware(kernel), cache_control_middleware]
    return chain
