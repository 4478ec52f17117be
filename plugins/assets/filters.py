"""Query-string parsing shared by the listing and the tag histogram: every bad value is a 400."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from plugins.assets import tags
from plugins.assets.errors import bad_request
from plugins.assets.store import SORT_COLUMNS, Filters

MAX_LIMIT = 500
MAX_NAME = 512


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request("INVALID_QUERY", f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise bad_request("INVALID_QUERY", f"{name} must be between {low} and {high}", field=name)
    return value


def page(request: web.Request, default_limit: int, max_limit: int) -> tuple[int, int]:
    limit = int_param(request, "limit", default_limit, 1, max_limit)
    offset = int_param(request, "offset", 0, 0, 2**62)
    return limit, offset


def sort(request: web.Request) -> tuple[str, str]:
    field = request.query.get("sort") or "created_at"
    if field not in SORT_COLUMNS:
        raise bad_request(
            "INVALID_QUERY",
            f"Unknown sort field {field!r}: expected one of {', '.join(SORT_COLUMNS)}",
            field="sort",
        )
    order = (request.query.get("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise bad_request("INVALID_QUERY", f"Unknown order {order!r}: expected asc or desc", field="order")
    return field, order


def _tag_list(request: web.Request, name: str) -> list[str]:
    try:
        return tags.parse_field(request.query.getall(name, []))
    except tags.BadTag as exc:
        raise bad_request("INVALID_QUERY", str(exc), field=name) from None


def _metadata(request: web.Request) -> dict[str, Any]:
    raw = request.query.get("metadata_filter")
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise bad_request(
            "INVALID_QUERY", "metadata_filter must be a JSON object", field="metadata_filter"
        ) from None
    if not isinstance(value, dict):
        raise bad_request("INVALID_QUERY", "metadata_filter must be a JSON object", field="metadata_filter")
    return value


def filters(request: web.Request, owners: tuple[str, ...] | None) -> Filters:
    name_contains = request.query.get("name_contains") or None
    if name_contains is not None and len(name_contains) > MAX_NAME:
        raise bad_request("INVALID_QUERY", "name_contains is too long", field="name_contains")
    return Filters(
        owners=owners,
        include_tags=_tag_list(request, "include_tags"),
        exclude_tags=_tag_list(request, "exclude_tags"),
        name_contains=name_contains,
        metadata=_metadata(request),
    )


def asset_id(value: str, field: str = "id") -> str:
    """A canonical UUID string, or a 400 naming the field."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise bad_request("INVALID_ID", f"{field} must be a UUID", field=field) from None


def display_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("INVALID_BODY", f"{field} must be a non-empty string", field=field)
    if len(value) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad_request("INVALID_BODY", f"{field} is too long or contains control characters", field=field)
    return value
