"""``/api/assets*`` and ``/api/tags``: served only at these paths (they already start with ``/api/``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from kernel import KERNEL_KEY, Kernel
from kernel.files.content_types import SVG, disposition, is_dangerous
from kernel.paths import is_within
from plugins.assets import filters, hashing, mime, placement, tags, views
from plugins.assets.errors import AssetError, bad_request, not_found
from plugins.assets.schemas import (
    FromHashBody,
    ListAssetsResponse,
    ListTagsResponse,
    SeedBody,
    TagHistogram,
    TagInfo,
    TagsAdded,
    TagsBody,
    TagsRemoved,
    UpdateBody,
    encode,
)
from plugins.assets.seed import DEFAULT_ROOTS
from plugins.assets.state import STATE, AssetsState
from plugins.assets.store import AssetRow, BadFilter
from plugins.assets.uploads import receive

routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def guarded(handler: Handler) -> Handler:
    """Client errors become the assets error body; nothing else leaks."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AssetError as exc:
            return exc.response()
        except tags.BadTag as exc:
            return bad_request("INVALID_TAGS", str(exc)).response()
        except BadFilter as exc:
            return bad_request("INVALID_QUERY", str(exc), field="metadata_filter").response()

    return wrapper


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(value), status=status, content_type="application/json")


def _state(request: web.Request) -> tuple[Kernel, AssetsState]:
    kernel = request.app[KERNEL_KEY]
    return kernel, kernel.stash[STATE]


async def _body(request: web.Request, kind: type[Any], required: bool = True) -> Any:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request("INVALID_JSON", "A JSON object body is required")
        return kind()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError:
        raise bad_request("INVALID_JSON", "The body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise bad_request("INVALID_JSON", f"Invalid JSON body: {exc}") from None


def _tags_body(value: Any, *, allow_protected: bool = False) -> list[str]:
    if not isinstance(value, list) or not value:
        raise bad_request("INVALID_TAGS", "tags must be a non-empty array of strings", field="tags")
    normal = tags.normalize_all(value)
    protected = [t for t in normal if t in tags.PROTECTED]
    if protected and not allow_protected:
        raise AssetError(
            400, "PROTECTED_TAG", f"Tag {protected[0]!r} is managed by the server", tag=protected[0]
        )
    return normal


def _user_metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise bad_request(
                "INVALID_JSON", "user_metadata must be a JSON object", field="user_metadata"
            ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("INVALID_JSON", "user_metadata must be a JSON object", field="user_metadata")
    return value


def _hash_param(value: Any, field: str = "hash") -> str:
    normal = hashing.normalize_hash(value) if isinstance(value, str) else None
    if normal is None:
        raise bad_request("INVALID_HASH", f"{field} must look like blake3:<64 hex digits>", field=field)
    return normal


def _mime_param(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not mime.valid_mime(value.strip()):
        raise bad_request("INVALID_BODY", "mime_type must look like type/subtype", field="mime_type")
    return value.strip().lower()


def _load(request: web.Request, state: AssetsState, raw_id: str | None = None) -> AssetRow:
    asset_id = filters.asset_id(raw_id if raw_id is not None else request.match_info["id"])
    row = state.store.get(asset_id)
    if row is None or not views.can_see(request, row.owner):
        raise not_found(id=asset_id)
    return row


def _writable(request: web.Request, row: AssetRow) -> None:
    """Shared records (seeded files) are read-only to individual users of a multi-user server."""
    owner = views.request_owner(request)
    if owner and row.owner != owner:
        raise AssetError(403, "FORBIDDEN", "This asset is shared and cannot be changed by a user", id=row.id)


def _preview(request: web.Request, state: AssetsState, value: Any, own_id: str | None = None) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request("INVALID_ID", "preview_id must be a UUID", field="preview_id")
    preview_id = filters.asset_id(value, "preview_id")
    row = state.store.get(preview_id)
    if row is None or not views.can_see(request, row.owner) or preview_id == own_id:
        raise bad_request(
            "INVALID_PREVIEW", "preview_id must name another existing asset", field="preview_id"
        )
    return preview_id


def _out(state: AssetsState, row: AssetRow, created_new: bool | None = None) -> Any:
    row_tags = state.store.tags_of([row.id])[row.id]
    if created_new is None:
        return views.asset(row, row_tags)
    return views.created(row, row_tags, created_new)


# --- static paths first: /api/assets/{id} must not swallow them ----------------------------------


@routes.head("/api/assets/hash/{hash}")
@guarded
async def check_hash(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    content_hash = _hash_param(request.match_info["hash"])
    if state.store.content_size(content_hash) is None:
        return web.Response(status=404)
    return web.Response(status=200)


@routes.get("/api/assets")
@guarded
async def list_assets(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    selection = filters.filters(request, views.visible_owners(request))
    field, order = filters.sort(request)
    limit, offset = filters.page(request, 50, filters.MAX_LIMIT)
    rows, total = state.store.list(selection, field, order, limit, offset)
    by_id = state.store.tags_of([r.id for r in rows])
    assets = [views.asset(r, by_id[r.id]) for r in rows]
    return _json(ListAssetsResponse(assets=assets, total=total, has_more=offset + len(rows) < total))


@routes.post("/api/assets")
@guarded
async def create_asset(request: web.Request) -> web.StreamResponse:
    kernel, state = _state(request)
    received = await receive(request, kernel.settings.user_path, kernel.settings.max_upload_bytes)
    upload = received.file
    try:
        owner = views.request_owner(request)
        raw_hash = received.text("hash")
        given_hash = _hash_param(raw_hash) if raw_hash not in (None, "") else None
        wanted_tags = placement.with_root_tag(tags.parse_field(received.fields.get("tags", [])))
        if tags.MISSING in wanted_tags:
            raise AssetError(400, "PROTECTED_TAG", "Tag 'missing' is managed by the server", tag=tags.MISSING)
        metadata = _user_metadata(received.text("user_metadata"))
        mime_override = _mime_param(received.text("mime_type"))
        preview_id = _preview(request, state, received.text("preview_id"))
        raw_name = received.text("name")
        if upload is None:
            if given_hash is None:
                raise bad_request(
                    "INVALID_BODY", "Send the content as the multipart part 'file'", field="file"
                )
            name = filters.display_name(raw_name)
            return _from_hash(
                request, state, given_hash, name, wanted_tags, metadata, mime_override, preview_id
            )
        name = filters.display_name(raw_name if raw_name not in (None, "") else upload.filename)
        if given_hash is not None and given_hash != upload.hash:
            raise bad_request(
                "HASH_MISMATCH",
                "The uploaded content does not match the given hash",
                expected=given_hash,
                actual=upload.hash,
            )
        existing = state.store.find_reference(owner, upload.hash, name)
        if existing is not None:
            return _json(_out(state, existing, created_new=False), status=200)
        directory = placement.directory_for(kernel, wanted_tags)
        target = placement.target_path(directory, upload.hash, name)
        path: str | None = str(target)
        mtime: float | None = None
        if state.store.get_by_path(str(target)) is not None:
            path = None  # identical bytes already stored there under another record
        else:
            mtime = await asyncio.to_thread(_place, upload.path, target)
        fields: dict[str, Any] = {
            "content_hash": upload.hash,
            "size": upload.size,
            "mime_type": mime_override or mime.sniff(upload.head, name),
            "name": name,
            "owner": owner,
            "tags": wanted_tags,
            "user_metadata": metadata,
            "metadata": _placed_metadata(kernel, target, wanted_tags),
            "preview_id": preview_id,
        }
        try:
            row = state.store.create(path=path, mtime=mtime, **fields)
        except sqlite3.IntegrityError:
            # A concurrent upload of the same bytes recorded the file first; share it.
            row = state.store.create(**fields)
        return _json(_out(state, row, created_new=True), status=201)
    finally:
        if upload is not None:
            upload.discard()


def _place(source: Path, target: Path) -> float:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return os.stat(target).st_mtime


def _placed_metadata(kernel: Kernel, target: Path, wanted_tags: list[str]) -> dict[str, Any]:
    root = next(t for t in wanted_tags if t in tags.ROOT_TAGS)
    if root in ("input", "output"):
        base = kernel.settings.input_path if root == "input" else kernel.settings.output_path
        rel = target.relative_to(base)
        sub = rel.parent.as_posix()
        return {"type": root, "subfolder": "" if sub == "." else sub, "filename": rel.name}
    return {"folder": wanted_tags[wanted_tags.index("models") + 1], "filename": target.name}


def _from_hash(
    request: web.Request,
    state: AssetsState,
    content_hash: str,
    name: str,
    wanted_tags: list[str],
    metadata: dict[str, Any],
    mime_override: str | None,
    preview_id: str | None,
) -> web.Response:
    size = state.store.content_size(content_hash)
    if size is None:
        raise AssetError(404, "HASH_NOT_FOUND", "No content with this hash", hash=content_hash)
    owner = views.request_owner(request)
    existing = state.store.find_reference(owner, content_hash, name)
    if existing is not None:
        return _json(_out(state, existing, created_new=False), status=200)
    source = state.store.visible_with_hash(content_hash, ("", owner)) or state.store.any_with_hash(
        content_hash
    )
    row = state.store.create(
        content_hash=content_hash,
        size=size,
        mime_type=mime_override or (source.mime_type if source else mime.sniff(b"", name)),
        name=name,
        owner=owner,
        tags=wanted_tags,
        user_metadata=metadata,
        preview_id=preview_id,
    )
    return _json(_out(state, row, created_new=True), status=201)


@routes.post("/api/assets/from-hash")
@guarded
async def create_from_hash(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    body = await _body(request, FromHashBody)
    content_hash = _hash_param(body.hash)
    name = filters.display_name(body.name)
    if body.tags is not None and not isinstance(body.tags, list):
        raise bad_request("INVALID_TAGS", "tags must be an array of strings", field="tags")
    wanted_tags = tags.normalize_all(body.tags or [])
    if tags.MISSING in wanted_tags:
        raise AssetError(400, "PROTECTED_TAG", "Tag 'missing' is managed by the server", tag=tags.MISSING)
    if isinstance(body.user_metadata, str):  # only the multipart form carries it as JSON text
        raise bad_request("INVALID_JSON", "user_metadata must be a JSON object", field="user_metadata")
    metadata = _user_metadata(body.user_metadata)
    return _from_hash(
        request,
        state,
        content_hash,
        name,
        wanted_tags,
        metadata,
        _mime_param(body.mime_type),
        _preview(request, state, body.preview_id),
    )


@routes.get("/api/assets/tags/refine")
@guarded
async def refine_tags(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    selection = filters.filters(request, views.visible_owners(request))
    filters.sort(request)
    filters.page(request, 50, filters.MAX_LIMIT)
    return _json(TagHistogram(tag_counts=state.store.tag_histogram(selection)))


@routes.get("/api/tags")
@guarded
async def list_tags(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    limit, offset = filters.page(request, 100, 1000)
    search = (request.query.get("search") or "").strip() or None
    counts, total = state.store.tag_counts(views.visible_owners(request), search, limit, offset)
    infos = [TagInfo(name=n, count=c) for n, c in counts]
    return _json(ListTagsResponse(tags=infos, total=total, has_more=offset + len(infos) < total))


@routes.post("/api/assets/seed")
@guarded
async def seed(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    body = await _body(request, SeedBody, required=False)
    roots = DEFAULT_ROOTS if body.roots is None else body.roots
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) for r in roots):
        raise bad_request("INVALID_BODY", "roots must be a non-empty array of root names", field="roots")
    unknown = [r for r in roots if r not in DEFAULT_ROOTS]
    if unknown:
        raise bad_request(
            "INVALID_BODY", f"Unknown root {unknown[0]!r}: expected models, input or output", field="roots"
        )
    started = state.seeder.start(list(dict.fromkeys(roots)))
    return _json({"status": "started" if started else "already_running"})


@routes.get("/api/assets/seed/status")
@guarded
async def seed_status(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    return _json(state.seeder.status())


@routes.post("/api/assets/seed/cancel")
@guarded
async def seed_cancel(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    return _json({"status": "cancelling" if state.seeder.cancel() else "not_running"})


@routes.post("/api/assets/prune")
@guarded
async def prune(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    marked = await asyncio.to_thread(state.store.prune)
    return _json({"status": "completed", "marked": marked})


# --- one asset ------------------------------------------------------------------------------------


@routes.get("/api/assets/{id}")
@guarded
async def get_asset(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    return _json(_out(state, _load(request, state)))


@routes.put("/api/assets/{id}")
@guarded
async def update_asset(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    row = _load(request, state)
    body = await _body(request, UpdateBody)
    changes: dict[str, Any] = {}
    if body.name is not msgspec.UNSET:
        changes["name"] = filters.display_name(body.name)
    if body.user_metadata is not msgspec.UNSET:
        if not isinstance(body.user_metadata, dict):
            raise bad_request("INVALID_JSON", "user_metadata must be a JSON object", field="user_metadata")
        changes["user_metadata"] = json.dumps(body.user_metadata)
    if body.preview_id is not msgspec.UNSET:
        changes["preview_id"] = _preview(request, state, body.preview_id, own_id=row.id)
    if body.mime_type is not msgspec.UNSET:
        override = _mime_param(body.mime_type)
        if override is None:
            raise bad_request("INVALID_BODY", "mime_type must look like type/subtype", field="mime_type")
        changes["mime_type"] = override
    if not changes:
        raise bad_request("INVALID_BODY", "Nothing to update: send name, user_metadata or preview_id")
    _writable(request, row)
    state.store.update(row.id, **changes)
    fresh = state.store.get(row.id)
    assert fresh is not None
    return _json(views.updated(fresh, state.store.tags_of([row.id])[row.id]))


@routes.delete("/api/assets/{id}")
@guarded
async def delete_asset(request: web.Request) -> web.StreamResponse:
    kernel, state = _state(request)
    row = _load(request, state)
    raw = (request.query.get("delete_content") or "true").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise bad_request("INVALID_QUERY", "delete_content must be true or false", field="delete_content")
    _writable(request, row)
    for path in state.store.delete(row.id, raw in _TRUE):
        if _deletable(kernel, path):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)
    return web.Response(status=204)


def _deletable(kernel: Kernel, path: str) -> bool:
    """Only files inside the server's own roots are ever removed."""
    roots: list[Path] = [kernel.settings.input_path, kernel.settings.output_path, kernel.settings.temp_path]
    if kernel.models is not None:
        roots += [p for paths in kernel.models.all_folder_paths().values() for p in paths]
    return os.path.isfile(path) and not os.path.islink(path) and any(is_within(r, path) for r in roots)


@routes.get("/api/assets/{id}/content")
@guarded
async def get_content(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    row = _load(request, state)
    path = state.store.live_path(row.hash, prefer=row.path)
    if path is None:
        raise AssetError(404, "CONTENT_MISSING", "The asset's file is missing", id=row.id)
    state.store.touch(row.id)
    content_type = row.mime_type
    headers = {"X-Content-Type-Options": "nosniff"}
    attachment = (request.query.get("disposition") or "attachment").lower() != "inline"
    if is_dangerous(content_type):
        headers["Vary"] = "Sec-Fetch-Dest"
        headers["Cache-Control"] = "no-store"
        if not (content_type == SVG and request.headers.get("Sec-Fetch-Dest", "").lower() == "image"):
            content_type = "application/octet-stream"
            attachment = True
    headers["Content-Type"] = content_type
    headers["Content-Disposition"] = disposition(row.name, attachment=attachment)
    return web.FileResponse(path, headers=headers)


@routes.post("/api/assets/{id}/tags")
@guarded
async def add_tags(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    row = _load(request, state)
    body = await _body(request, TagsBody)
    wanted = _tags_body(body.tags)
    _writable(request, row)
    added, present, total = state.store.add_tags(row.id, wanted)
    return _json(TagsAdded(added=added, already_present=present, total_tags=total))


@routes.delete("/api/assets/{id}/tags")
@guarded
async def remove_tags(request: web.Request) -> web.StreamResponse:
    _, state = _state(request)
    row = _load(request, state)
    body = await _body(request, TagsBody)
    wanted = _tags_body(body.tags)
    _writable(request, row)
    removed, absent, total = state.store.remove_tags(row.id, wanted)
    return _json(TagsRemoved(removed=removed, not_present=absent, total_tags=total))
