"""HTTP handlers: ``/users``, ``/userdata*``, ``/v2/userdata``, ``/settings*``.

Error bodies follow the reference: userdata answers plain text, ``/users`` and ``/settings``
answer JSON. Every refusal is a 4xx; a client name never reaches the disk before
``kernel.paths`` has checked it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kernel import KERNEL_KEY
from kernel.paths import UnsafePath, safe_join
from plugins.userdata import atomic, files
from plugins.userdata.serving import USER_CSS, file_response
from plugins.userdata.settings_store import SETTINGS, SETTINGS_FILE
from plugins.userdata.users import USERS, BadUsername, UnknownUser

log = logging.getLogger("comfykernel.userdata")

routes = web.RouteTableDef()

# The reference puts this message in the reason phrase of a 400 with an empty body.
INVALID_FILENAME = 'Invalid filename. Please avoid special characters like :\\/*?"<>|'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):
    """Ends a request early with ``response`` (a 4xx in the route family's error shape)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def refusals(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal.response

    return wrapper


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() == "true"


def _overwrite(request: web.Request) -> bool:
    # Only the literal "false" turns overwriting off, as in the reference.
    return request.query.get("overwrite", "true") != "false"


def _user(request: web.Request, *, json_errors: bool = False) -> tuple[str, Path]:
    """(user id, user root) of the request, or a refusal (401 JSON for settings, 403 text otherwise)."""
    store = request.app[KERNEL_KEY].stash[USERS]
    try:
        user = store.request_user(request.headers)
        return user, store.user_root(user)
    except UnknownUser:
        if json_errors:
            raise Refusal(_json_error(401, "Unknown user")) from None
        raise Refusal(_text(403, "Unknown user")) from None
    except UnsafePath:
        if json_errors:
            raise Refusal(_json_error(403, "Invalid user directory")) from None
        raise Refusal(_text(403, "Invalid user directory")) from None


def _file_param(request: web.Request, user_root: Path, param: str) -> Path:
    raw = request.match_info.get(param, "")
    if not raw:
        raise Refusal(_text(400, "File not provided"))
    try:
        path = files.resolve(user_root, raw)
    except UnsafePath as exc:
        status = 400 if exc.reason == "empty name" else 403
        raise Refusal(_text(status, f"Invalid path: {exc.reason}")) from None
    if atomic.is_temp_name(path.name):
        # Such a file would be deleted by the next startup's sweep of interrupted writes.
        raise Refusal(_text(400, "Invalid path: reserved name"))
    return path


def _written_answer(path: Path, user_root: Path, full_info: bool) -> web.Response:
    if full_info:
        return web.json_response(files.file_info(path, user_root))
    return web.json_response(files.relative_name(path, user_root))


# --- users --------------------------------------------------------------------------------------


@routes.get("/users")
async def get_users(request: web.Request) -> web.Response:
    store = request.app[KERNEL_KEY].stash[USERS]
    if store.multi_user:
        return web.json_response({"storage": "server", "users": store.users})
    try:
        root = store.user_root(store.request_user(request.headers))
    except (UnknownUser, UnsafePath):
        return _text(403, "Invalid user directory")
    return web.json_response({"storage": "server", "migrated": root.exists()})


@routes.post("/users")
async def post_users(request: web.Request) -> web.Response:
    body = await request.json()
    name = body.get("username") if isinstance(body, dict) else None
    try:
        user_id = await request.app[KERNEL_KEY].stash[USERS].add_user(name)
    except BadUsername as exc:
        return _json_error(400, str(exc))
    return web.json_response(user_id)


# --- userdata -----------------------------------------------------------------------------------


@routes.get("/userdata")
@refusals
async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        return _text(400, "Directory not provided")
    _, root = _user(request)
    try:
        path = files.resolve(root, directory, allow_root=True)
    except UnsafePath:
        return _text(403, "Invalid directory")
    if not path.exists():
        return _text(404, "Directory not found")
    listing = await asyncio.to_thread(
        files.list_v1,
        path,
        root,
        recurse=_flag(request, "recurse"),
        full_info=_flag(request, "full_info"),
        split=_flag(request, "split"),
    )
    return web.json_response(listing)


@routes.get("/v2/userdata")
@refusals
async def list_userdata_v2(request: web.Request) -> web.Response:
    _, root = _user(request)
    raw = request.query.get("path", "")
    try:
        target = files.resolve(root, raw, allow_root=True) if raw else root
    except UnsafePath:
        return _text(400, "Invalid path requested")
    if not target.exists():
        if target == root:
            return web.json_response([])
        return _text(404, "Path not found")
    if not target.is_dir():
        return _text(400, "Requested path is not a directory")
    try:
        listing = await asyncio.to_thread(files.list_v2, target, root)
    except OSError as exc:
        log.error("cannot list %s: %s", target, exc)
        return _text(500, "Error reading directory")
    return web.json_response(listing)


@routes.get("/userdata/{file}")
@refusals
async def get_userdata(request: web.Request) -> web.Response:
    _, root = _user(request)
    path = _file_param(request, root, "file")
    if not path.is_file():
        return _text(404, "File not found")
    body = await asyncio.to_thread(path.read_bytes)
    return file_response(path, body, is_user_css=path == root / USER_CSS)


async def _write_then_answer(
    request: web.Request, root: Path, result: Path, operation: Any, *args: Any, **kwargs: Any
) -> web.Response:
    """Run a write or move off the loop and answer as the reference does for both."""
    try:
        await asyncio.to_thread(operation, *args, **kwargs)
    except FileExistsError:
        return _text(409, "File already exists")
    except UnsafePath:
        return _text(403, "Invalid path")
    except OSError as exc:
        log.info("cannot write %s: %s", result, exc)
        return web.Response(status=400, reason=INVALID_FILENAME)
    return _written_answer(result, root, _flag(request, "full_info"))


@routes.post("/userdata/{file}")
@refusals
async def post_userdata(request: web.Request) -> web.Response:
    _, root = _user(request)
    path = _file_param(request, root, "file")
    overwrite = _overwrite(request)
    if not overwrite and os.path.lexists(path):
        return _text(409, "File already exists")
    body = await request.read()
    return await _write_then_answer(
        request, root, path, files.write_file, path, root, body, overwrite=overwrite
    )


@routes.delete("/userdata/{file}")
@refusals
async def delete_userdata(request: web.Request) -> web.Response:
    _, root = _user(request)
    path = _file_param(request, root, "file")
    if not os.path.lexists(path):
        return _text(404, "File not found")
    if path.is_dir():
        return _text(400, "Cannot delete a directory")
    await asyncio.to_thread(os.remove, path)
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
@refusals
async def move_userdata(request: web.Request) -> web.Response:
    _, root = _user(request)
    source = _file_param(request, root, "file")
    if not os.path.lexists(source):
        return _text(404, "File not found")
    dest = _file_param(request, root, "dest")
    overwrite = _overwrite(request)
    if not overwrite and os.path.lexists(dest):
        return _text(409, "File already exists")
    return await _write_then_answer(request, root, dest, files.move, source, dest, root, overwrite=overwrite)


# --- settings -----------------------------------------------------------------------------------


def _settings_target(request: web.Request) -> tuple[str, Path]:
    user, root = _user(request, json_errors=True)
    try:
        return user, safe_join(root, SETTINGS_FILE)
    except UnsafePath:
        # comfy.settings.json is a symlink leading out of the user's folder.
        raise Refusal(_json_error(403, "Invalid settings path")) from None


@routes.get("/settings")
@refusals
async def get_settings(request: web.Request) -> web.Response:
    _, path = _settings_target(request)
    return web.json_response(await request.app[KERNEL_KEY].stash[SETTINGS].read(path))


@routes.get("/settings/{id}")
@refusals
async def get_setting(request: web.Request) -> web.Response:
    _, path = _settings_target(request)
    settings = await request.app[KERNEL_KEY].stash[SETTINGS].read(path)
    value: Any = settings.get(request.match_info["id"])
    return web.json_response(value)


@routes.post("/settings")
@refusals
async def post_settings(request: web.Request) -> web.Response:
    user, path = _settings_target(request)
    patch = await request.json()
    if not isinstance(patch, dict):
        return _json_error(400, "Settings must be a JSON object")
    await request.app[KERNEL_KEY].stash[SETTINGS].merge(user, path, patch)
    return web.Response(status=200)


@routes.post("/settings/{id}")
@refusals
async def post_setting(request: web.Request) -> web.Response:
    user, path = _settings_target(request)
    setting_id = request.match_info["id"]
    if not setting_id:
        return _json_error(400, "Setting id not provided")
    value = await request.json()
    await request.app[KERNEL_KEY].stash[SETTINGS].merge(user, path, {setting_id: value})
    return web.Response(status=200)
