"""How a user file goes back to the browser: the ``/view`` content-type policy, reduced.

A user can store any bytes under any name, so anything a browser would render as active content
(HTML, scripts, stylesheets, SVG, XML) is sent as an ``application/octet-stream`` download.
The one exception is the user's own ``user.css`` at their root, which the frontend loads as a
stylesheet. Written here because no shared helper for the policy exists yet in ``kernel/``.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

FALLBACK_TYPE = "application/octet-stream"
USER_CSS = "user.css"
_ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/ecmascript",
        "application/ecmascript",
        "text/css",
        "image/svg+xml",
        "message/rfc822",
    }
)


def is_active_type(content_type: str) -> bool:
    """True for types a browser may execute or style a page with when served inline."""
    base = content_type.split(";", 1)[0].strip().lower()
    return base in _ACTIVE_TYPES or base.endswith(("/xml", "+xml"))


def guess_type(path: Path) -> str:
    return mimetypes.guess_type(path.name, strict=False)[0] or FALLBACK_TYPE


def file_response(path: Path, body: bytes, *, is_user_css: bool) -> web.Response:
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_user_css:
        headers["Content-Disposition"] = "inline"
        content_type = "text/css"
    else:
        headers["Content-Disposition"] = "attachment"
        content_type = guess_type(path)
        if is_active_type(content_type):
            content_type = FALLBACK_TYPE
            headers["Cache-Control"] = "no-store"
    return web.Response(body=body, content_type=content_type, headers=headers)
