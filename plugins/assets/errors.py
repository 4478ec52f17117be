"""The assets family's error body: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web


class AssetError(Exception):
    """A client-facing failure: HTTP ``status``, a stable ``code`` and a readable message."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
        return web.Response(
            body=msgspec.json.encode(body), status=self.status, content_type="application/json"
        )


def bad_request(code: str, message: str, **details: Any) -> AssetError:
    return AssetError(400, code, message, **details)


def not_found(message: str = "Asset not found", **details: Any) -> AssetError:
    return AssetError(404, "ASSET_NOT_FOUND", message, **details)
