"""A pack's own sampling loop reports through ``comfy.utils`` / ``latent_preview`` to the client.

Runs a pack written for ComfyUI through the real server and checks the WebSocket frames: one
``progress`` message per step (with a latent2rgb preview frame each step when the server's
preview method asks for previews, none when it is ``none``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.core_nodes.node_helpers import messages, run_prompt

PACK = textwrap.dedent(
    """
    import torch

    import comfy.latent_formats
    import comfy.model_management
    import comfy.utils
    import latent_preview


    class _Model:
        class model:
            latent_format = comfy.latent_formats.SD15()


    class SurfaceSteps:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"steps": ("INT", {"default": 3, "min": 1, "max": 10})}}

        RETURN_TYPES = ("LATENT",)
        FUNCTION = "run"
        CATEGORY = "testing"
        OUTPUT_NODE = True

        def run(self, steps):
            x0 = torch.zeros(1, 4, 8, 8)
            callback = latent_preview.prepare_callback(_Model(), steps)
            for i in range(steps):
                callback(i, x0, x0, steps)
            bar = comfy.utils.ProgressBar(2)
            bar.update(1)
            bar.update_absolute(2)
            return ({"samples": x0},)


    NODE_CLASS_MAPPINGS = {"SurfaceSteps": SurfaceSteps}
    """
)


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    root = tmp_path / "custom_nodes"
    (root / "surface_pack").mkdir(parents=True)
    (root / "surface_pack" / "__init__.py").write_text(PACK)
    return root


async def _server(comfy_server: Any, pack_dir: Path, preview: str) -> Any:
    return await comfy_server(
        plugins=["comfy_compat", "models", "core_nodes"],
        custom_nodes_dir=[str(pack_dir)],
        cpu=True,
        preview_method=preview,
    )


async def test_pack_loop_progress_and_previews(comfy_server: Any, pack_dir: Path) -> None:
    server = await _server(comfy_server, pack_dir, "latent2rgb")
    frames = await run_prompt(server, {"1": {"class_type": "SurfaceSteps", "inputs": {"steps": 3}}})
    progress = [(m["value"], m["max"]) for m in messages(frames, "progress") if m.get("node") == "1"]
    # Every step with a preview is sent; the server may coalesce plain updates that follow fast.
    assert progress[:3] == [(1, 3), (2, 3), (3, 3)] and progress[-1] == (2, 2)
    previews = [f for f in frames if isinstance(f, (bytes, bytearray))]
    assert len(previews) == 3
    assert all(bytes(p[8:11]) == b"\xff\xd8\xff" for p in previews)  # JPEG after the 8-byte header
    assert messages(frames, "execution_success")


async def test_no_previews_when_the_server_sends_none(comfy_server: Any, pack_dir: Path) -> None:
    server = await _server(comfy_server, pack_dir, "none")
    frames = await run_prompt(server, {"1": {"class_type": "SurfaceSteps", "inputs": {"steps": 2}}})
    progress = [(m["value"], m["max"]) for m in messages(frames, "progress")]
    assert progress[0] == (1, 2) and progress[-1] == (2, 2) and set(progress) <= {(1, 2), (2, 2)}
    assert not [f for f in frames if isinstance(f, (bytes, bytearray))]

