"""How a user file goes back to the browser: the ``/view`` content-type policy.

A user can store any bytes under any name, so anything a browser would render as active content
(HTML, scripts, stylesheets, SVG, XML) is sent as an ``application/octet-stream`` download; the
type table and the "dangerous" test are the kernel's (``kernel.files.content_types``). The one
exception is the user's own ``user.css`` at their root, which the frontend loads as a stylesheet.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from kernel.files.content_types import guess_type, is_dangerous

FALLBACK_TYPE = "application/octet-stream"
USER_CSS = "user.css"


def file_response(path: Path, body: bytes, *, is_user_css: bool) -> web.Response:
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_user_css:
        headers["Content-Disposition"] = "inline"
        content_type = "text/css"
    else:
        headers["Content-Disposition"] = "attachment"
        content_type = guess_type(path.name)
        if is_dangerous(content_type):
            content_type = FALLBACK_TYPE
            headers["Cache-Control"] = "no-store"
    return web.Response(body=body, content_type=content_type, headers=headers)
