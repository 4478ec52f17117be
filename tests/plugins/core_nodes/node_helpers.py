"""Running prompts through a real server with the core_nodes plugin."""

from __future__ import annotations

import uuid
from typing import Any

from tests.kernel.exec_helpers import collect, connect, submit


async def start(comfy_server: Any, **settings: Any) -> Any:
    return await comfy_server(plugins=["core_nodes"], **settings)


async def run_prompt(server: Any, prompt: dict[str, Any], **extra: Any) -> list[Any]:
    """Submit ``prompt`` and return every frame up to its end (dicts and binary frames)."""
    client_id, ws = await connect(server, uuid.uuid4().hex)
    try:
        prompt_id = await submit(server, prompt, client_id, **extra)
        return await collect(ws, prompt_id, timeout=60)
    finally:
        await ws.close()


def messages(frames: list[Any], type_: str) -> list[dict[str, Any]]:
    return [f["data"] for f in frames if isinstance(f, dict) and f["type"] == type_]
