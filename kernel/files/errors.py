"""The JSON error bodies of the file routes (the reference answers status-only bodies)."""

from __future__ import annotations

from aiohttp import web


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
