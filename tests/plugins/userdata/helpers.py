"""Shared helpers for the userdata tests: raw (pre-encoded) requests and the user folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yarl


async def raw(
    server: Any, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    """Send ``path`` exactly as written: the client must not re-encode or normalise escapes."""
    url = yarl.URL(server.url + path, encoded=True)
    async with server.session.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), resp


def user_root(server: Any, user: str = "default") -> Path:
    return server.kernel.settings.user_path / user
