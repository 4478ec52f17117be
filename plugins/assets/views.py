"""Store rows → wire shapes, and who is asking (owner visibility)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kernel import KERNEL_KEY
from plugins.assets.errors import AssetError
from plugins.assets.schemas import Asset, AssetCreated, AssetUpdated
from plugins.assets.store import AssetRow

USER_HEADER = "Comfy-User"
DEFAULT_USER = "default"
# Ids with this prefix belong to the server itself and are never reachable over HTTP.
SYSTEM_USER_PREFIX = "__"


def iso(ts: float) -> str:
    # The web UI's schema accepts only "Z" UTC timestamps, not "+00:00" offsets.
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def request_owner(request: web.Request) -> str:
    """The owner of what this request creates: the Comfy-User in multi-user mode, else shared ('')."""
    if not request.app[KERNEL_KEY].settings.multi_user:
        return ""
    owner = request.headers.get(USER_HEADER) or DEFAULT_USER
    if owner.startswith(SYSTEM_USER_PREFIX):
        raise AssetError(403, "UNKNOWN_USER", "Unknown user")
    return owner


def visible_owners(request: web.Request) -> tuple[str, ...] | None:
    """Owners whose records this request sees; None = every record (single-user servers).

    In multi-user mode everyone sees shared records (seeded files, outputs of prompts without
    a user) and their own.
    """
    owner = request_owner(request)
    return None if owner == "" else ("", owner)


def can_see(request: web.Request, owner: str) -> bool:
    owners = visible_owners(request)
    return owners is None or owner in owners


def _fields(row: AssetRow, tags: list[str]) -> dict[str, Any]:
    preview_url = None
    if row.preview_id:
        preview_url = f"/api/assets/{row.preview_id}/content"
    elif row.mime_type.startswith("image/"):
        preview_url = f"/api/assets/{row.id}/content"
    return {
        "id": row.id,
        "name": row.name,
        "asset_hash": row.hash,
        "size": row.size,
        "mime_type": row.mime_type,
        "tags": tags,
        "user_metadata": json.loads(row.user_metadata),
        "metadata": json.loads(row.metadata),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "last_access_time": iso(row.last_access_time),
        "is_immutable": bool(row.is_immutable),
        "preview_url": preview_url,
        "preview_id": row.preview_id,
        "prompt_id": row.prompt_id,
    }


def asset(row: AssetRow, tags: list[str]) -> Asset:
    return Asset(**_fields(row, tags))


def created(row: AssetRow, tags: list[str], created_new: bool) -> AssetCreated:
    return AssetCreated(**_fields(row, tags), created_new=created_new)


def updated(row: AssetRow, tags: list[str]) -> AssetUpdated:
    return AssetUpdated(
        id=row.id,
        name=row.name,
        asset_hash=row.hash,
        tags=tags,
        mime_type=row.mime_type,
        user_metadata=json.loads(row.user_metadata),
        updated_at=iso(row.updated_at),
    )
