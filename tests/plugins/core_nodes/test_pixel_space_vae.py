"""VAELoader's "pixel_space" choice: the image is the latent, through the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .node_helpers import messages, run_ok, saved_latents


async def test_pixel_space_vae_round_trips_an_image(comfy_server: Any, tmp_path: Path) -> None:
    # Odd sizes: a downscale ratio of 1 crops nothing.
    pixels = np.random.default_rng(7).integers(0, 256, size=(13, 10, 3), dtype=np.uint8)
    (tmp_path / "input").mkdir()
    Image.fromarray(pixels).save(tmp_path / "input" / "p.png")
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info/VAELoader")
    assert status == 200
    assert "pixel_space" in info["VAELoader"]["input"]["required"]["vae_name"][0]

    prompt = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "p.png"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 0]}},
        "save_latent": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "px"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "back"}},
    }
    frames = await run_ok(server, prompt)

    # The latent is the image channels-first, moved from 0..1 to -1..1.
    latent = saved_latents(server, frames)["latent"]
    image = torch.from_numpy(pixels).float() / 255.0
    expected = (image * 2.0 - 1.0).movedim(-1, 0)[None]
    assert latent.shape == (1, 3, 13, 10)
    assert torch.allclose(latent, expected, atol=1e-6)

    # Decoding gives the picture back. SaveImage truncates to 8 bits (as the reference does), so a
    # value the float round trip leaves a hair under k/255 is written as k - 1: at most one level.
    (saved,) = [m for m in messages(frames, "executed") if m["node"] == "5"]
    (entry,) = saved["output"]["images"]
    written = Path(server.kernel.settings.output_path) / entry["subfolder"] / entry["filename"]
    back = np.asarray(Image.open(written).convert("RGB")).astype(np.int16)
    assert back.shape == pixels.shape
    assert np.abs(back - pixels).max() <= 1
    assert (back == pixels).mean() > 0.5
