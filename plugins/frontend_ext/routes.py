"""HTTP routes of the frontend plugin (static mounts are in ``webroot.static_routes``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from kernel import KERNEL_KEY, StashKey
from kernel.paths import UnsafePath, safe_join
from plugins.frontend_ext import extensions, i18n, subgraphs, templates
from plugins.frontend_ext.logs import LOG_BUFFER
from plugins.frontend_ext.packs import PACKS
from plugins.frontend_ext.replacements import REPLACEMENTS
from plugins.frontend_ext.webroot import WEB_ROOT

routes = web.RouteTableDef()

# Built on first request and kept for the life of the server (the reference caches these too).
I18N_CACHE = StashKey[dict[str, Any]]()
SUBGRAPH_CACHE = StashKey[dict[str, subgraphs.Subgraph]]()
TEMPLATE_ROOTS = StashKey[list[Path]]()

NO_CACHE = {"Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    root = request.app[KERNEL_KEY].stash.get(WEB_ROOT, None)
    if root is None:
        raise web.HTTPNotFound()
    return web.FileResponse(root / "index.html", headers=NO_CACHE)


@routes.get("/user.css")
async def user_css(request: web.Request) -> web.StreamResponse:
    # index.html links a user.css that no frontend release ships; an empty sheet (or the web
    # root's own, when a custom root has one) keeps the console clean.
    root = request.app[KERNEL_KEY].stash.get(WEB_ROOT, None)
    if root is not None and (root / "user.css").is_file():
        return web.FileResponse(root / "user.css", headers=NO_CACHE)
    return web.Response(text="", content_type="text/css", headers=NO_CACHE)


@routes.get("/extensions")
async def get_extensions(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    urls = await asyncio.to_thread(
        extensions.list_extensions, kernel.stash.get(WEB_ROOT, None), kernel.web_extensions
    )
    return web.json_response(urls)


@routes.get("/extensions/{pack}/{path:.+}", api_twin=False)
async def extension_file(request: web.Request) -> web.StreamResponse:
    kernel = request.app[KERNEL_KEY]
    name, relative = request.match_info["pack"], request.match_info["path"]
    ext = kernel.web_extensions.entries.get(name)
    web_root = kernel.stash.get(WEB_ROOT, None)
    try:
        if ext is not None:
            path = safe_join(ext.directory, relative)
        elif web_root is not None:  # the web UI's own /extensions/core/... files
            path = safe_join(web_root / "extensions", name, relative)
        else:
            raise web.HTTPNotFound()
    except UnsafePath as exc:
        return _error(400, str(exc))
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


@routes.get("/i18n")
async def get_i18n(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    if I18N_CACHE not in kernel.stash:
        kernel.stash[I18N_CACHE] = await asyncio.to_thread(
            i18n.build_translations, kernel.translations, kernel.stash[PACKS].sorted()
        )
    return web.json_response(kernel.stash[I18N_CACHE])


@routes.get("/workflow_templates")
async def get_workflow_templates(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    index = await asyncio.to_thread(templates.build_template_index, kernel.stash[PACKS].sorted())
    return web.json_response({pack: list(names) for pack, names in index.items()})


@routes.get("/workflow_templates/{pack}/{filename}")
async def get_workflow_template(request: web.Request) -> web.StreamResponse:
    kernel = request.app[KERNEL_KEY]
    pack = kernel.stash[PACKS].entries.get(request.match_info["pack"])
    filename = request.match_info["filename"]
    if pack is None or not filename.endswith(".json"):
        return _error(404, "Workflow template not found")
    path = (await asyncio.to_thread(templates.pack_templates, pack)).get(filename[: -len(".json")])
    if path is None:
        return _error(404, "Workflow template not found")
    return web.FileResponse(path)


@routes.get("/templates/{path:.+}", api_twin=False)
async def get_core_template(request: web.Request) -> web.StreamResponse:
    kernel = request.app[KERNEL_KEY]
    roots = kernel.stash.setdefault(TEMPLATE_ROOTS, templates.core_template_roots())
    try:
        path = await asyncio.to_thread(templates.find_core_template, roots, request.match_info["path"])
    except UnsafePath as exc:
        return _error(400, str(exc))
    if path is None:
        return _error(404, "Template file not found")
    return web.FileResponse(path)


async def _load_subgraphs(request: web.Request) -> dict[str, subgraphs.Subgraph]:
    kernel = request.app[KERNEL_KEY]
    if SUBGRAPH_CACHE not in kernel.stash:
        kernel.stash[SUBGRAPH_CACHE] = await asyncio.to_thread(
            subgraphs.build_subgraph_index, kernel.stash[PACKS].sorted()
        )
    return kernel.stash[SUBGRAPH_CACHE]


@routes.get("/global_subgraphs")
async def get_global_subgraphs(request: web.Request) -> web.Response:
    index = await _load_subgraphs(request)
    return web.json_response({sid: entry.info() for sid, entry in index.items()})


@routes.get("/global_subgraphs/{id}")
async def get_global_subgraph(request: web.Request) -> web.Response:
    entry = (await _load_subgraphs(request)).get(request.match_info["id"])
    if entry is None:
        return _error(404, "Subgraph not found")
    try:
        body = await asyncio.to_thread(entry.with_data)
    except (OSError, UnicodeDecodeError):
        return _error(404, "Subgraph not found")
    return web.json_response(body)


@routes.get("/node_replacements")
async def get_node_replacements(request: web.Request) -> web.Response:
    return web.json_response(request.app[KERNEL_KEY].stash[REPLACEMENTS].as_json())


@routes.get("/internal/logs")
async def get_logs(request: web.Request) -> web.Response:
    return web.json_response(request.app[KERNEL_KEY].stash[LOG_BUFFER].text())


@routes.get("/internal/logs/raw")
async def get_logs_raw(request: web.Request) -> web.Response:
    return web.json_response(request.app[KERNEL_KEY].stash[LOG_BUFFER].raw())


@routes.patch("/internal/logs/subscribe")
async def subscribe_logs(request: web.Request) -> web.Response:
    body = await request.json()
    client_id = body.get("clientId") if isinstance(body, dict) else None
    enabled = body.get("enabled") if isinstance(body, dict) else None
    if not isinstance(client_id, str) or not client_id:
        return _error(400, "clientId must be a non-empty string")
    if not isinstance(enabled, bool):
        return _error(400, "enabled must be a boolean")
    request.app[KERNEL_KEY].stash[LOG_BUFFER].subscribe(client_id, enabled)
    return web.Response(status=200)
