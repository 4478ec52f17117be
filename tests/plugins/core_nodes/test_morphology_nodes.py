"""Morphology, ImageRGBToYUV, ImageYUVToRGB (comfy_extras.nodes_morphology) against hand-written
max/min filters and the BT.601 YCbCr formulas, and a run through the server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.nodes.morphology import ImageRGBToYUV, ImageYUVToRGB, Morphology

from .node_helpers import messages, run_prompt, start


def _dilate(image: torch.Tensor, size: int) -> torch.Tensor:
    """Max over a size x size window centred on each pixel; outside the image does not count."""
    x = image.movedim(-1, 1)
    return torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2).movedim(1, -1)


def _erode(image: torch.Tensor, size: int) -> torch.Tensor:
    return -_dilate(-image, size)


def _blobs() -> torch.Tensor:
    torch.manual_seed(3)
    return (torch.rand(2, 12, 14, 3) > 0.6).float() * torch.rand(2, 12, 14, 3)


@pytest.mark.parametrize("size", [3, 5])
def test_each_operation_is_its_max_min_formula(size: int) -> None:
    image = _blobs()
    opened = _dilate(_erode(image, size), size)
    closed = _erode(_dilate(image, size), size)
    want = {
        "dilate": _dilate(image, size),
        "erode": _erode(image, size),
        "open": opened,
        "close": closed,
        "gradient": _dilate(image, size) - _erode(image, size),
        "top_hat": image - opened,
        "bottom_hat": closed - image,
    }
    for operation, expected in want.items():
        (out,) = Morphology().process(image, operation, size)
        assert out.shape == image.shape
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0, msg=operation)


def test_dilate_grows_a_point_into_a_square() -> None:
    image = torch.zeros(1, 9, 9, 1)
    image[0, 4, 4, 0] = 1.0
    (out,) = Morphology().process(image, "dilate", 5)
    want = torch.zeros(1, 9, 9, 1)
    want[0, 2:7, 2:7, 0] = 1.0
    assert torch.equal(out, want)
    (back,) = Morphology().process(out, "erode", 5)
    assert torch.equal(back, image)


def test_unknown_operation_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown morphology operation"):
        Morphology().process(torch.zeros(1, 4, 4, 3), "blur", 3)


def test_rgb_to_yuv_is_bt601_with_centred_chroma() -> None:
    image = torch.tensor([[[[1.0, 0.0, 0.0], [0.2, 0.6, 0.9]]]])
    y, u, v = ImageRGBToYUV().execute(image)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert y.shape == u.shape == v.shape == image.shape
    for plane in range(3):  # every channel of an output holds the same plane
        torch.testing.assert_close(y[..., plane], luma, atol=1e-6, rtol=0)
        torch.testing.assert_close(u[..., plane], (b - luma) * 0.564 + 0.5, atol=1e-6, rtol=0)
        torch.testing.assert_close(v[..., plane], (r - luma) * 0.713 + 0.5, atol=1e-6, rtol=0)


def test_yuv_round_trip_and_plane_means() -> None:
    image = torch.rand(2, 5, 7, 3)
    (rgb,) = ImageYUVToRGB().execute(*ImageRGBToYUV().execute(image))
    torch.testing.assert_close(rgb, image, atol=1e-3, rtol=0)
    # A plane given as a coloured image counts by its channels' mean.
    y = torch.full((1, 2, 2, 3), 0.5)
    u = torch.tensor([0.4, 0.5, 0.6]).expand(1, 2, 2, 3)
    v = torch.full((1, 2, 2, 3), 0.5)
    (grey,) = ImageYUVToRGB().execute(y, u, v)
    torch.testing.assert_close(grey, torch.full((1, 2, 2, 3), 0.5), atol=1e-6, rtol=0)


def test_yuv_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="3-channel"):
        ImageRGBToYUV().execute(torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match="same batch and size"):
        ImageYUVToRGB().execute(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 2, 3))


async def test_morphology_and_yuv_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 4, "height": 4}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {
            "class_type": "ImageCompositeMasked",
            "inputs": {"destination": ["1", 0], "source": ["3", 0], "x": 6, "y": 6, "resize_source": False},
        },
        "5": {
            "class_type": "Morphology",
            "inputs": {"image": ["4", 0], "operation": "gradient", "kernel_size": 3},
        },
        "6": {"class_type": "ImageRGBToYUV", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "ImageYUVToRGB", "inputs": {"Y": ["6", 0], "U": ["6", 1], "V": ["6", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "edges"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    with Image.open(server.kernel.settings.output_path / "edges_00001_.png") as img:
        pixels = np.asarray(img.convert("L"), dtype=np.int16)
    # The gradient of a 4x4 white square is a ring 2 pixels wide around its border.
    want = np.zeros((16, 16), dtype=np.int16)
    want[5:11, 5:11] = 255
    want[7:9, 7:9] = 0
    assert np.abs(pixels - want).max() <= 1


async def test_bad_operation_is_a_validation_error(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {
            "class_type": "Morphology",
            "inputs": {"image": ["1", 0], "operation": "blur", "kernel_size": 3},
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_not_in_list"
