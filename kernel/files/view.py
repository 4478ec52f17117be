"""GET /view: serve a file of input/output/temp, optionally converted or channel-extracted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from kernel.app import KERNEL_KEY
from kernel.files import images
from kernel.files.content_types import SVG, disposition, guess_type, is_dangerous
from kernel.files.errors import error
from kernel.paths import FILE_TYPES, UnsafePath, safe_join, split_annotation, split_relative, type_root


def _resolve(request: web.Request) -> Path | web.Response:
    query = request.query  # aiohttp has percent-decoded it once; never decode again
    raw = query.get("filename")
    if raw is None:
        return error(404, "filename is required")
    filename, annotated = split_annotation(raw)
    file_type = annotated or query.get("type") or "output"
    if file_type not in FILE_TYPES:
        return error(400, f"Invalid type {file_type!r}: expected one of input, output, temp")
    subfolder = query.get("subfolder", "")
    try:
        if not split_relative(filename, allow_empty=True):
            return error(400, "filename is empty")
    except UnsafePath as exc:
        return error(400, f"Invalid filename: {exc.reason}")
    root = type_root(request.app[KERNEL_KEY], file_type)
    try:
        split_relative(subfolder, allow_empty=True)
    except UnsafePath as exc:
        return error(403, f"Invalid subfolder: {exc.reason}")
    try:
        path = safe_join(root, subfolder, filename)
    except UnsafePath as exc:
        # Both parts passed the string checks, so this is a link or a length leading outside.
        return error(403, f"Forbidden path: {exc.reason}")
    if not path.is_file():
        return error(404, "File not found")
    kernel = request.app[KERNEL_KEY]
    if not kernel.hooks.may_read_file(kernel, request, file_type, path):
        # An authentication plugin keeps users out of each other's outputs.
        return error(403, "You may not read this file")
    return path


def _resolve_hash(request: web.Request, raw: str) -> tuple[Path, str, str] | web.Response:
    """``filename=blake3:<hex>``: the assets plugin's file for that content, if it is enabled."""
    kernel = request.app[KERNEL_KEY]
    if kernel.assets is None:
        return error(404, "Asset hashes are served only with the assets plugin enabled")
    user = (request.headers.get("Comfy-User") or "default") if kernel.settings.multi_user else None
    found = kernel.assets.resolve_hash(raw, user)
    if found is None:
        return error(404, "No asset with this hash")
    path, content_type, name = found
    return Path(path), str(content_type), str(name)


async def view(request: web.Request) -> web.StreamResponse:
    raw_name = request.query.get("filename") or ""
    content_type: str | None = None
    if raw_name.startswith("blake3:"):
        found = _resolve_hash(request, raw_name)
        if isinstance(found, web.Response):
            return found
        path, content_type, name = found
    else:
        resolved = _resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        path = resolved
        name = path.name
    channel = request.query.get("channel", "")
    preview = request.query.get("preview")
    try:
        if preview is not None:
            fmt, quality = images.parse_preview(preview, channel)
            body = await asyncio.to_thread(images.preview_bytes, path, fmt, quality, channel)
            return web.Response(
                body=body, content_type=f"image/{fmt}", headers={"Content-Disposition": disposition(name)}
            )
        if channel in ("rgb", "a"):
            body = await asyncio.to_thread(images.channel_png, path, channel)
            return web.Response(
                body=body, content_type="image/png", headers={"Content-Disposition": disposition(name)}
            )
    except images.IMAGE_ERRORS:
        return error(400, "The file is not an image that can be converted")
    return _raw(request, path, name, content_type)


def _raw(request: web.Request, path: Path, name: str, content_type: str | None = None) -> web.FileResponse:
    content_type = content_type or guess_type(name)
    headers = {"X-Content-Type-Options": "nosniff"}
    attachment = False
    if is_dangerous(content_type):
        headers["Vary"] = "Sec-Fetch-Dest"
        headers["Cache-Control"] = "no-store"
        # An <img> may show an SVG (scripts don't run there); anything else only downloads.
        if not (content_type == SVG and request.headers.get("Sec-Fetch-Dest", "").lower() == "image"):
            content_type = "application/octet-stream"
            attachment = True
    headers["Content-Type"] = content_type
    headers["Content-Disposition"] = disposition(name, attachment=attachment)
    return web.FileResponse(path, headers=headers)
