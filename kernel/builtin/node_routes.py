"""/object_info and /embeddings: what nodes and embeddings this server offers."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from aiohttp import web

from kernel.app import KERNEL_KEY
from kernel.nodes import NodeSpec, node_specs

log = logging.getLogger("comfykernel.nodes")
routes = web.RouteTableDef()


def _encode_info(spec: NodeSpec) -> bytes | None:
    """One node's NodeInfo as JSON; None (logged) when the node cannot describe itself."""
    try:
        return msgspec.json.encode(spec.object_info(), enc_hook=str)
    except Exception:
        log.exception("object_info of node %s failed; omitted", spec.name)
        return None


def _json_object(parts: dict[str, bytes]) -> web.Response:
    # Nodes are encoded one by one so a broken node drops out instead of failing the listing.
    body = b"{" + b",".join(msgspec.json.encode(name) + b":" + data for name, data in parts.items()) + b"}"
    return web.Response(body=body, content_type="application/json")


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    specs = node_specs(request.app[KERNEL_KEY])
    parts: dict[str, bytes] = {}
    for name in specs.names():
        spec = specs.get(name)
        data = _encode_info(spec) if spec is not None else None
        if data is not None:
            parts[name] = data
    return _json_object(parts)


@routes.get("/object_info/{node_class}")
async def get_object_info_node(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    spec = node_specs(request.app[KERNEL_KEY]).get(name)
    data = _encode_info(spec) if spec is not None else None
    return _json_object({name: data} if data is not None else {})


@routes.get("/embeddings")
async def get_embeddings(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    names: list[Any] = kernel.hooks.register_embeddings(kernel)
    return web.json_response(names)
