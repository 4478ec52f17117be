"""Shared helpers for the executor tests: start a server with the exec pack, run prompts over HTTP+WS."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp

from tests.nodepack import exec_nodes

EXEC_PACK = ("execpack", exec_nodes)


async def start(comfy_server: Any, **settings: Any) -> Any:
    return await comfy_server(plugins=[EXEC_PACK], **settings)


async def connect(
    server: Any, client_id: str | None = None, flags: dict[str, Any] | None = None
) -> tuple[str, Any]:
    client_id = client_id or uuid.uuid4().hex
    ws = await server.ws(client_id)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "status"
    if flags is not None:
        await ws.send_json({"type": "feature_flags", "data": flags})
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "feature_flags"
    return client_id, ws


async def submit(server: Any, prompt: dict[str, Any], client_id: str | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"prompt": prompt, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    status, answer = await server.json("POST", "/prompt", json=body)
    assert status == 200, answer
    return answer["prompt_id"]


async def collect(ws: Any, prompt_id: str, timeout: float = 15.0) -> list[Any]:
    """Every frame (JSON dicts, binary bytes) until ``executing`` with ``node: null`` for the prompt."""
    frames: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - loop.time()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        frames.append(data)
        d = data.get("data") or {}
        if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
            return frames


async def run(
    server: Any, ws: Any, client_id: str, prompt: dict[str, Any], **extra: Any
) -> list[dict[str, Any]]:
    prompt_id = await submit(server, prompt, client_id, **extra)
    return [f for f in await collect(ws, prompt_id) if isinstance(f, dict)]


def of_type(messages: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if m["type"] == type_]


def executing_nodes(messages: list[dict[str, Any]]) -> list[str]:
    return [d["node"] for d in of_type(messages, "executing") if d["node"] is not None]


def executed_ui(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {d["node"]: d["output"] for d in of_type(messages, "executed")}


def cached_nodes(messages: list[dict[str, Any]]) -> list[str]:
    return of_type(messages, "execution_cached")[0]["nodes"]
