"""Running prompts through a real server with the core_nodes plugin."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.kernel.exec_helpers import collect, connect, submit


async def start(comfy_server: Any, **settings: Any) -> Any:
    return await comfy_server(plugins=["core_nodes"], **settings)


async def start_with_models(comfy_server: Any, root: Path, **folders: Path | list[Path]) -> Any:
    """A server with the core nodes and model folders under ``root``: each file given for a
    folder (``checkpoints=path``, ``loras=[a, b]``) is linked into ``root/models/<folder>``."""
    for folder, files in folders.items():
        target = root / "models" / folder
        target.mkdir(parents=True, exist_ok=True)
        for src in files if isinstance(files, list) else [files]:
            (target / src.name).symlink_to(src)
    return await comfy_server(plugins=["core_nodes", "models"])


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


async def run_ok(server: Any, prompt: dict[str, Any]) -> list[Any]:
    """:func:`run_prompt`, failing the test with the message of an execution error if one came."""
    frames = await run_prompt(server, prompt)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    return frames


def saved_latents(server: Any, frames: list[Any], prefix: str = "save_") -> dict[str, Any]:
    """The latent each SaveLatent node named ``<prefix><key>`` wrote in ``frames``, by ``key``."""
    from safetensors.torch import load_file

    out_root = Path(server.kernel.settings.output_path)
    latents: dict[str, Any] = {}
    for done in messages(frames, "executed"):
        if done["node"].startswith(prefix):
            (entry,) = done["output"]["latents"]
            path = out_root / entry["subfolder"] / entry["filename"]
            latents[done["node"][len(prefix) :]] = load_file(str(path))["latent_tensor"]
    return latents
