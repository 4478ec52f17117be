"""JoinImageWithAlpha, SplitImageWithAlpha, PorterDuffImageComposite against hand-computed pixels,
their /object_info against the reference's, and a run through the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.nodes.compositing import (
    ImageCompositeMasked,
    JoinImageWithAlpha,
    LatentCompositeMasked,
    PorterDuffImageComposite,
    SplitImageWithAlpha,
)

from .golden import GOLDEN_DIR
from .node_helpers import messages, run_prompt, start

NAMES = (
    "JoinImageWithAlpha",
    "SplitImageWithAlpha",
    "PorterDuffImageComposite",
    "LatentCompositeMasked",
    "ImageCompositeMasked",
)
FIELDS = (
    "input",
    "input_order",
    "output",
    "output_name",
    "output_is_list",
    "category",
    "python_module",
    "display_name",
)


def _pixel(value: float | list[float], h: int = 1, w: int = 1, b: int = 1) -> torch.Tensor:
    """An IMAGE of one colour (a float: grey RGB)."""
    rgb = [value] * 3 if isinstance(value, float) else value
    return torch.tensor(rgb, dtype=torch.float32).expand(b, h, w, len(rgb)).clone()


def _mask(value: float, h: int = 1, w: int = 1, b: int = 1) -> torch.Tensor:
    return torch.full((b, h, w), value, dtype=torch.float32)


@pytest.mark.parametrize("name", NAMES)
async def test_object_info_is_the_reference(comfy_server: Any, name: str) -> None:
    golden = json.loads((GOLDEN_DIR / "object_info_core.json").read_text())[name]
    server = await start(comfy_server)
    status, info = await server.json("GET", f"/object_info/{name}")
    assert status == 200
    for field in FIELDS:
        assert info[name][field] == golden[field], field


def test_split_rgba_and_rgb() -> None:
    rgba = _pixel([0.2, 0.4, 0.6, 0.25], h=2, w=3)
    image, mask = SplitImageWithAlpha().split_image_with_alpha(rgba)
    assert image.shape == (1, 2, 3, 3)
    torch.testing.assert_close(image, _pixel([0.2, 0.4, 0.6], h=2, w=3))
    torch.testing.assert_close(mask, _mask(0.75, h=2, w=3))  # mask = 1 - alpha
    _, opaque = SplitImageWithAlpha().split_image_with_alpha(_pixel(0.5, h=2, w=2))
    torch.testing.assert_close(opaque, _mask(0.0, h=2, w=2))


def test_join_turns_the_mask_into_alpha_and_repeats_the_batch() -> None:
    image = torch.stack([_pixel(0.1, h=2, w=2)[0], _pixel(0.9, h=2, w=2)[0]])
    mask = torch.tensor([[[0.0, 1.0], [0.25, 0.5]]])  # one mask for a batch of two
    (out,) = JoinImageWithAlpha().join_image_with_alpha(image, mask)
    assert out.shape == (2, 2, 2, 4)
    torch.testing.assert_close(out[..., :3], image)
    want_alpha = torch.tensor([[1.0, 0.0], [0.75, 0.5]])
    torch.testing.assert_close(out[0, ..., 3], want_alpha)
    torch.testing.assert_close(out[1, ..., 3], want_alpha)
    # An RGBA input's own alpha is replaced; a mask of another size is stretched to the image.
    (again,) = JoinImageWithAlpha().join_image_with_alpha(out, _mask(0.5, h=1, w=1))
    torch.testing.assert_close(again[..., 3], torch.full((2, 2, 2), 0.5))


# Source: colour 0.8 with mask 0.5 (alpha 0.5); destination: colour 0.4, opaque.
# Premultiplied: sc = 0.4, sa = 0.5, dc = 0.4, da = 1. (colour, mask) worked out by hand.
HAND = {
    "SRC_OVER": (0.6, 0.0),  # sc + (1-sa) dc = 0.6, alpha 1
    "DST_OVER": (0.4, 0.0),  # dc + (1-da) sc = 0.4
    "SRC": (0.8, 0.5),
    "DST": (0.4, 0.0),
    "CLEAR": (0.0, 1.0),
    "MULTIPLY": (0.32, 0.5),  # sc dc = 0.16 over alpha 0.5
    "SCREEN": (0.64, 0.0),  # sc + dc - sc dc = 0.64
    "XOR": (0.4, 0.5),  # (1-sa) dc = 0.2 over alpha 0.5
    "DST_OUT": (0.4, 0.5),  # (1-sa) dc = 0.2 over alpha 0.5
    "SRC_IN": (0.8, 0.5),  # sc da = 0.4 over alpha 0.5
    "SRC_OUT": (0.0, 1.0),  # (1-da) = 0
    "SRC_ATOP": (0.6, 0.0),  # da sc + (1-sa) dc = 0.6, alpha da
    "DST_ATOP": (0.4, 0.5),  # sa dc + (1-da) sc = 0.2 over alpha sa = 0.5
    "DST_IN": (0.4, 0.5),  # dc sa = 0.2 over alpha 0.5
    "ADD": (0.8, 0.0),  # clamp(0.8), alpha clamp(1.5)
    "DARKEN": (0.6, 0.0),  # (1-da) sc + (1-sa) dc + min = 0 + 0.2 + 0.4
    "LIGHTEN": (0.6, 0.0),  # the two colours are equal premultiplied: max = min
}


@pytest.mark.parametrize("mode", sorted(HAND))
def test_porter_duff_modes_on_one_pixel(mode: str) -> None:
    image, mask = PorterDuffImageComposite().composite(_pixel(0.8), _mask(0.5), _pixel(0.4), _mask(0.0), mode)
    colour, transparency = HAND[mode]
    torch.testing.assert_close(image, _pixel(colour), atol=1e-6, rtol=0)
    torch.testing.assert_close(mask, _mask(transparency), atol=1e-6, rtol=0)


def test_porter_duff_overlay_uses_the_darker_branch_where_the_destination_is_dark() -> None:
    # dc = 0.1 (opaque): 2 dc < da, so colour = 2 sc dc = 2 * 0.4 * 0.1 = 0.08; alpha 1.
    image, mask = PorterDuffImageComposite().composite(
        _pixel(0.8), _mask(0.5), _pixel(0.1), _mask(0.0), "OVERLAY"
    )
    torch.testing.assert_close(image, _pixel(0.08), atol=1e-6, rtol=0)
    torch.testing.assert_close(mask, _mask(0.0))


def test_porter_duff_brings_the_source_to_the_destination_size_and_batches_to_the_shortest() -> None:
    source = _pixel(0.8, h=2, w=2, b=3)
    image, mask = PorterDuffImageComposite().composite(
        source, _mask(0.5, h=2, w=2, b=3), _pixel(0.4, h=4, w=6, b=2), _mask(0.0, h=1, w=1, b=2), "SRC_OVER"
    )
    assert image.shape == (2, 4, 6, 3) and mask.shape == (2, 4, 6)
    torch.testing.assert_close(image, _pixel(0.6, h=4, w=6, b=2), atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, _mask(0.0, h=4, w=6, b=2), atol=1e-5, rtol=0)


def test_porter_duff_refuses_different_channel_counts() -> None:
    with pytest.raises(ValueError, match="same number of channels"):
        PorterDuffImageComposite().composite(
            _pixel([0.1, 0.2, 0.3, 0.4]), _mask(0.0), _pixel(0.4), _mask(0.0), "SRC_OVER"
        )


async def test_join_then_split_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x336699},
        },
        "2": {"class_type": "SolidMask", "inputs": {"value": 0.25, "width": 8, "height": 8}},
        "3": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["2", 0]}},
        "4": {"class_type": "SplitImageWithAlpha", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 1]}},
        "6": {"class_type": "SaveImage", "inputs": {"filename_prefix": "rgb", "images": ["4", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mask", "images": ["5", 0]}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    saved = {d["node"]: d["output"]["images"][0] for d in messages(frames, "executed")}
    root = Path(server.kernel.settings.output_path)

    def pixels(node: str) -> np.ndarray:
        return np.asarray(
            Image.open(root / saved[node]["subfolder"] / saved[node]["filename"]).convert("RGB")
        )

    assert (np.abs(pixels("6").astype(int) - [0x33, 0x66, 0x99]) <= 1).all()
    assert (np.abs(pixels("7").astype(int) - 64) <= 1).all()  # mask 0.25 survives the round trip


async def test_unknown_mode_is_a_validation_error(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 8, "height": 8}},
        "3": {
            "class_type": "PorterDuffImageComposite",
            "inputs": {
                "source": ["1", 0],
                "source_alpha": ["2", 0],
                "destination": ["1", 0],
                "destination_alpha": ["2", 0],
                "mode": "BLEND",
            },
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_not_in_list"


def test_latent_composite_masked_pastes_at_latent_positions() -> None:
    destination = {"samples": torch.zeros(2, 4, 4, 4), "batch_index": [3, 4]}
    source = {"samples": torch.ones(1, 4, 2, 2)}
    # x / y are pixels: (8, 16) is latent column 1, row 2. One source for a batch of two.
    (out,) = LatentCompositeMasked().composite(destination, source, 8, 16, False)
    want = torch.zeros(2, 4, 4, 4)
    want[..., 2:4, 1:3] = 1.0
    assert torch.equal(out["samples"], want)
    assert out["batch_index"] == [3, 4] and destination["samples"].abs().sum() == 0  # input kept
    # A mask blends; past the right edge the source is cut off.
    (half,) = LatentCompositeMasked().composite(
        destination, source, 24, 0, False, mask=torch.full((16, 16), 0.5)
    )
    want = torch.zeros(2, 4, 4, 4)
    want[..., 0:2, 3:4] = 0.5
    assert torch.equal(half["samples"], want)
    # Resized, the source covers the whole destination.
    (resized,) = LatentCompositeMasked().composite(destination, source, 0, 0, True)
    assert torch.equal(resized["samples"], torch.ones(2, 4, 4, 4))


def test_image_composite_masked_matches_channels_and_uses_pixels() -> None:
    destination = torch.zeros(1, 4, 4, 3)
    source = torch.ones(1, 2, 2, 4)  # RGBA onto RGB: the alpha channel is dropped
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    (out,) = ImageCompositeMasked().composite(destination, source, 1, 2, False, mask)
    want = torch.zeros(1, 4, 4, 3)
    want[0, 2, 1] = 1.0
    want[0, 3, 2] = 1.0
    assert torch.equal(out, want)
    # RGB onto RGBA: the source gets an opaque alpha.
    (rgba,) = ImageCompositeMasked().composite(
        torch.zeros(1, 2, 2, 4), torch.full((1, 2, 2, 3), 0.5), 0, 0, False
    )
    assert torch.equal(rgba[0, 0, 0], torch.tensor([0.5, 0.5, 0.5, 1.0]))
