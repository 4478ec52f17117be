"""/models, /experiment/models*, /internal/folder_paths.

Errors here are status-only with an empty body, as the reference answers them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from aiohttp import web

from kernel import KERNEL_KEY
from kernel.paths import UnsafePath, safe_join
from plugins.models.api import ModelPaths
from plugins.models.preview import PreviewEscapes, find_preview, to_webp

routes = web.RouteTableDef()

# The reference hides these two from the model manager's folder list.
_EXPERIMENT_HIDDEN = frozenset({"configs", "custom_nodes"})


def _json(body: object) -> web.Response:
    # msgspec encodes a 10,000-name listing several times faster than json.dumps.
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


def _models(request: web.Request) -> ModelPaths:
    models: ModelPaths = request.app[KERNEL_KEY].models
    return models


@routes.get("/models")
async def get_model_kinds(request: web.Request) -> web.Response:
    return web.json_response(_models(request).kinds())


@routes.get("/models/{folder}")
async def get_model_names(request: web.Request) -> web.Response:
    models = _models(request)
    folder = request.match_info["folder"]
    if not models.is_kind(folder):
        return web.Response(status=404)
    return _json(await asyncio.to_thread(models.list_names, folder))


@routes.get("/experiment/models")
async def get_model_folders(request: web.Request) -> web.Response:
    models = _models(request)
    body = [
        {"name": name, "folders": [str(p) for p in paths], "extensions": sorted(models.extensions(name))}
        for name, paths in models.all_folder_paths().items()
        if name not in _EXPERIMENT_HIDDEN
    ]
    return web.json_response(body)


@routes.get("/experiment/models/{folder}")
async def get_model_files(request: web.Request) -> web.Response:
    models = _models(request)
    folder = request.match_info["folder"]
    if not models.is_kind(folder):
        return web.Response(status=404)
    files = await asyncio.to_thread(models.list_files, folder)
    body = [
        {
            "name": f.name,
            "pathIndex": f.path_index,
            "modified": f.modified,
            "created": f.created,
            "size": f.size,
        }
        for f in files
    ]
    return _json(body)


@routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
async def get_model_preview(request: web.Request) -> web.Response:
    models = _models(request)
    folder = request.match_info["folder"]
    filename = request.match_info["filename"]
    if not models.is_kind(folder):
        return web.Response(status=404)
    try:
        index = int(request.match_info["path_index"])
    except ValueError:
        return web.Response(status=400)
    if not filename:
        return web.Response(status=400)
    roots = models.folder_paths(folder)
    if not 0 <= index < len(roots):
        return web.Response(status=404)
    root = roots[index]
    try:
        # Real-path containment: a model symlinked from outside the folder is refused too.
        model = safe_join(root, filename)
    except UnsafePath:
        return web.Response(status=403)
    return await asyncio.to_thread(_preview_response, root, model)


def _preview_response(root: Path, model: Path) -> web.Response:
    try:
        source = find_preview(root, model)
    except PreviewEscapes:
        return web.Response(status=403)
    if source is None:
        return web.Response(status=404)
    data = to_webp(source)
    if data is None:
        return web.Response(status=404)
    return web.Response(body=data, content_type="image/webp")


@routes.get("/internal/folder_paths")
async def get_folder_paths(request: web.Request) -> web.Response:
    paths = _models(request).all_folder_paths()
    return web.json_response({name: [str(p) for p in folder] for name, folder in paths.items()})
