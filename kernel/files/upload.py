"""POST /upload/image and POST /upload/mask."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from kernel.app import KERNEL_KEY
from kernel.files import images, storage
from kernel.files.errors import error
from kernel.paths import (
    FILE_TYPES,
    UnknownFileType,
    UnsafePath,
    check_segment,
    resolve_file,
    safe_join,
    split_annotation,
    type_root,
)

log = logging.getLogger("comfykernel.files")

# The reference treats exactly these as "yes".
_TRUE = ("true", "1")


class BadUpload(Exception):
    """A client error in an upload request: ``status`` and a client-safe ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UploadTarget:
    file_type: str
    subfolder: str  # echoed back exactly as sent
    root: Path
    directory: Path
    filename: str
    overwrite: bool


async def _read_form(request: web.Request) -> MultiDictProxy[Any]:
    try:
        return await request.post()  # honours client_max_size: oversize bodies raise 413
    except web.HTTPException:
        raise
    except Exception as exc:  # malformed multipart framing: aiohttp raises assorted types
        raise BadUpload(400, f"Malformed form body: {exc}") from None


def _text_field(form: MultiDictProxy[Any], name: str, default: str) -> str:
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadUpload(400, f"Field {name!r} must be text, not a file")
    return value


def _target(request: web.Request, form: MultiDictProxy[Any]) -> tuple[UploadTarget, web.FileField]:
    image = form.get("image")
    if not isinstance(image, web.FileField) or not image.filename:
        raise BadUpload(
            400, "No file provided: send the image as the multipart field 'image' with a filename"
        )
    file_type = _text_field(form, "type", "") or "input"
    if file_type not in FILE_TYPES:
        raise BadUpload(400, f"Invalid type {file_type!r}: expected one of input, output, temp")
    subfolder = _text_field(form, "subfolder", "")
    overwrite = _text_field(form, "overwrite", "").strip().lower() in _TRUE
    kernel = request.app[KERNEL_KEY]
    root = type_root(kernel, file_type)
    try:
        filename = check_segment(image.filename)
    except UnsafePath as exc:
        raise BadUpload(400, f"Invalid file name: {exc.reason}") from None
    try:
        directory = safe_join(root, subfolder, allow_root=True)
        safe_join(root, subfolder, filename)
    except UnsafePath as exc:
        raise BadUpload(400, f"Invalid subfolder: {exc.reason}") from None
    return UploadTarget(file_type, subfolder, root, directory, filename, overwrite), image


async def _store(request: web.Request, target: UploadTarget, data: bytes) -> web.Response:
    algorithm = request.app[KERNEL_KEY].settings.default_hashing_function
    try:
        name = await asyncio.to_thread(
            storage.store_upload,
            target.root,
            target.directory,
            target.filename,
            data,
            target.overwrite,
            algorithm,
        )
    except UnsafePath as exc:
        return error(400, f"Invalid file name: {exc.reason}")
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        return error(409, "The target name is taken by a directory or a file in the way")
    body: dict[str, Any] = {"name": name, "subfolder": target.subfolder, "type": target.file_type}
    asset = await _register_asset(request, target.directory / name, target.file_type)
    if asset is not None:
        body["asset"] = asset
    return web.json_response(body)


async def _register_asset(request: web.Request, path: Path, file_type: str) -> dict[str, Any] | None:
    """With the assets plugin enabled, record the stored file there (``kernel.assets``)."""
    kernel = request.app[KERNEL_KEY]
    if kernel.assets is None:
        return None
    user = (request.headers.get("Comfy-User") or "default") if kernel.settings.multi_user else None
    try:
        info: dict[str, Any] = await asyncio.to_thread(kernel.assets.register_upload, path, file_type, user)
    except Exception:
        # The file is stored and named; a failed asset record must not turn that into an error.
        log.exception("could not record upload %s as an asset", path)
        return None
    return info


async def upload_image(request: web.Request) -> web.Response:
    try:
        form = await _read_form(request)
        target, image = _target(request, form)
    except BadUpload as exc:
        return error(exc.status, exc.message)
    data = await asyncio.to_thread(image.file.read)
    return await _store(request, target, data)


def _original_path(request: web.Request, raw: str) -> tuple[Path, str]:
    try:
        ref = json.loads(raw)
    except ValueError:
        raise BadUpload(400, "original_ref is not valid JSON") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise BadUpload(400, "original_ref must be a JSON object with a string 'filename'")
    subfolder = ref.get("subfolder") or ""
    ref_type = ref.get("type") or "output"
    if not isinstance(subfolder, str) or not isinstance(ref_type, str):
        raise BadUpload(400, "original_ref 'type' and 'subfolder' must be strings")
    name, annotated = split_annotation(ref["filename"])
    try:
        return resolve_file(
            request.app[KERNEL_KEY], annotated or ref_type, subfolder, name
        ), annotated or ref_type
    except UnknownFileType as exc:
        raise BadUpload(400, f"original_ref: {exc}") from None
    except UnsafePath as exc:
        raise BadUpload(400, f"original_ref: invalid path: {exc.reason}") from None


async def upload_mask(request: web.Request) -> web.Response:
    try:
        form = await _read_form(request)
        target, image = _target(request, form)
        raw_ref = form.get("original_ref")
        if not isinstance(raw_ref, str):
            raise BadUpload(400, "original_ref is required (a JSON object with 'filename')")
        original, original_type = _original_path(request, raw_ref)
    except BadUpload as exc:
        return error(exc.status, exc.message)
    if not original.is_file():
        # The reference answers 200 and writes nothing; a name that was never written misleads.
        return error(404, "The original image does not exist")
    kernel = request.app[KERNEL_KEY]
    if not kernel.hooks.may_read_file(kernel, request, original_type, original):
        # The stored composite would show the original: reading it is what /view would refuse.
        return error(403, "You may not read the original image")
    mask = await asyncio.to_thread(image.file.read)
    try:
        data = await asyncio.to_thread(images.composite_mask, original, mask)
    except images.ImageProblem as exc:
        return error(400, str(exc))
    except images.IMAGE_ERRORS:
        return error(400, "The mask or the original is not a readable image")
    return await _store(request, target, data)
