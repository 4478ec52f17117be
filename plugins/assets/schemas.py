"""Wire shapes of the assets API (the spec's ``Asset``, ``AssetCreated``, ... schemas)."""

from __future__ import annotations

from typing import Any

import msgspec


class Asset(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str
    asset_hash: str
    size: int
    mime_type: str
    tags: list[str]
    user_metadata: dict[str, Any]
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    last_access_time: str
    is_immutable: bool
    preview_url: str | None = None
    preview_id: str | None = None
    prompt_id: str | None = None


class AssetCreated(Asset, kw_only=True, omit_defaults=True):
    created_new: bool


class AssetUpdated(msgspec.Struct, kw_only=True):
    id: str
    name: str
    asset_hash: str
    tags: list[str]
    mime_type: str
    user_metadata: dict[str, Any]
    updated_at: str


class ListAssetsResponse(msgspec.Struct):
    assets: list[Asset]
    total: int
    has_more: bool


class TagInfo(msgspec.Struct):
    name: str
    count: int


class ListTagsResponse(msgspec.Struct):
    tags: list[TagInfo]
    total: int
    has_more: bool


class TagHistogram(msgspec.Struct):
    tag_counts: dict[str, int]


class TagsAdded(msgspec.Struct):
    added: list[str]
    already_present: list[str]
    total_tags: list[str]


class TagsRemoved(msgspec.Struct):
    removed: list[str]
    not_present: list[str]
    total_tags: list[str]


# --- request bodies (fields typed loosely so we can answer a precise 400 ourselves) ---


class FromHashBody(msgspec.Struct, kw_only=True):
    hash: Any = None
    name: Any = None
    tags: Any = None
    user_metadata: Any = None
    mime_type: Any = None
    preview_id: Any = None


class UpdateBody(msgspec.Struct, kw_only=True):
    name: Any = msgspec.UNSET
    user_metadata: Any = msgspec.UNSET
    preview_id: Any = msgspec.UNSET
    mime_type: Any = msgspec.UNSET


class TagsBody(msgspec.Struct, kw_only=True):
    tags: Any = None


class SeedBody(msgspec.Struct, kw_only=True):
    roots: Any = None


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)
