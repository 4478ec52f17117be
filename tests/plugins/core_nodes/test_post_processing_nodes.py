"""Post-processing nodes (comfy_extras.nodes_post_processing): each against a computation written
out here (numpy filters, blend formulas, Lab statistics via kornia), and through the real server,
including the dynamic inputs (growing batch groups, resize / colour-transfer option widgets)."""

from __future__ import annotations

from typing import Any

import kornia
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from plugins.core_nodes.nodes import post_processing as pp

from .node_helpers import messages, run_prompt, start


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- blend -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "a", "b", "expected"),
    [
        ("normal", 0.2, 0.6, 0.6),
        ("multiply", 0.5, 0.4, 0.2),
        ("screen", 0.5, 0.4, 1 - 0.5 * 0.6),
        ("overlay", 0.25, 0.4, 2 * 0.25 * 0.4),
        ("overlay", 0.75, 0.4, 1 - 2 * 0.25 * 0.6),
        ("soft_light", 0.5, 0.25, 0.5 - 0.5 * 0.5 * 0.5),
        ("soft_light", 0.16, 0.75, 0.16 + 0.5 * (((16 * 0.16 - 12) * 0.16 + 4) * 0.16 - 0.16)),
        ("soft_light", 0.64, 0.75, 0.64 + 0.5 * (0.8 - 0.64)),
        ("difference", 0.7, 0.2, 0.5),
    ],
)
def test_blend_modes(mode: str, a: float, b: float, expected: float) -> None:
    image1, image2 = torch.full((1, 2, 2, 3), a), torch.full((1, 2, 2, 3), b)
    (out,) = pp.ImageBlend().execute(image1, image2, 0.5, mode)
    assert torch.allclose(out, torch.full_like(out, min(max(0.5 * a + 0.5 * expected, 0), 1)), atol=1e-6)


def test_blend_fixes_alpha_and_size() -> None:
    rgba, rgb = torch.full((1, 4, 4, 4), 0.5), torch.full((1, 8, 8, 3), 0.25)
    # The source loses its alpha and is resized (bicubic) to the destination's 8x8.
    (out,) = pp.ImageBlend().execute(rgb, rgba, 1.0, "normal")
    assert out.shape == (1, 8, 8, 3) and torch.allclose(out, torch.full_like(out, 0.5))
    # An RGB source over an RGBA destination counts as opaque.
    (opaque,) = pp.ImageBlend().execute(torch.full((1, 4, 4, 4), 0.0), rgb[:, :4, :4], 0.5, "normal")
    assert opaque.shape == (1, 4, 4, 4)
    assert torch.allclose(opaque[..., :3], torch.full((1, 4, 4, 3), 0.125)) and opaque[..., 3].eq(0.5).all()
    with pytest.raises(ValueError, match="unsupported blend mode"):
        pp.ImageBlend().execute(rgb, rgb, 0.5, "hue")


# --- filters -------------------------------------------------------------------------------------


def numpy_gaussian(radius: int, sigma: float) -> np.ndarray:
    axis = np.linspace(-1, 1, 2 * radius + 1)
    g = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def numpy_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """[H, W, C] correlated with ``kernel``, edges reflected (numpy's "reflect" is torch's)."""
    r = kernel.shape[0] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


def test_blur_is_a_reflect_padded_gaussian() -> None:
    image = seeded(2, 9, 7, 3)
    (out,) = pp.ImageBlur().execute(image, 2, 0.8)
    kernel = numpy_gaussian(2, 0.8)
    for i in range(2):
        expected = numpy_filter(image[i].numpy().astype(np.float64), kernel)
        assert np.allclose(out[i].numpy(), expected, atol=1e-5)


def test_sharpen_is_an_unsharp_mask() -> None:
    image = seeded(1, 8, 8, 3)
    (out,) = pp.ImageSharpen().execute(image, 1, 1.0, 0.3)
    kernel = numpy_gaussian(1, 1.0) * -3.0
    kernel[1, 1] += 1 - kernel.sum()
    expected = np.clip(numpy_filter(image[0].numpy().astype(np.float64), kernel), 0, 1)
    assert np.allclose(out[0].numpy(), expected, atol=1e-5)
    assert pp.ImageSharpen().execute(image, 1, 1.0, 0.0)[0].allclose(image, atol=1e-6)


# --- quantize ------------------------------------------------------------------------------------


def four_colours() -> torch.Tensor:
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    return colours[torch.arange(64) % 4].reshape(1, 8, 8, 3)


def test_quantize_keeps_an_image_with_few_colours() -> None:
    image = four_colours()
    (out,) = pp.ImageQuantize().execute(image, 4, "none")
    assert torch.equal(out, image)


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-8"])
def test_quantize_limits_the_palette(dither: str) -> None:
    image = seeded(2, 16, 16, 3)
    (out,) = pp.ImageQuantize().execute(image, 3, dither)
    for item in out:
        assert len(torch.unique(item.reshape(-1, 3), dim=0)) <= 3
    assert out.shape == image.shape


def test_bayer_matrices() -> None:
    assert np.allclose(pp.bayer_matrix(2), [[-0.375, 0.125], [0.375, -0.125]])
    four = pp.bayer_matrix(4)
    # The 16 thresholds are evenly spread over (-0.5, 0.5).
    assert np.allclose(np.sort(four.ravel()), (np.arange(16) - 7.5) / 16)


def test_quantize_refuses_rgba() -> None:
    with pytest.raises(ValueError, match="RGB"):
        pp.ImageQuantize().execute(seeded(1, 4, 4, 4), 4, "none")


# --- scaling -------------------------------------------------------------------------------------


def test_scale_to_total_pixels() -> None:
    image = seeded(1, 50, 100, 3)
    (out,) = pp.ImageScaleToTotalPixels().execute(image, "bilinear", 0.01, 1)
    # sqrt(0.01 * 2^20 / 5000) = 1.4482: 144.8 x 72.4 pixels, rounded.
    assert out.shape == (1, 72, 145, 3)
    (stepped,) = pp.ImageScaleToTotalPixels().execute(image, "nearest-exact", 0.01, 8)
    assert stepped.shape == (1, 72, 144, 3)


@pytest.mark.parametrize(
    ("kind", "options", "size"),
    [
        ("scale dimensions", {"width": 20, "height": 0, "crop": "disabled"}, (10, 20)),
        ("scale dimensions", {"width": 16, "height": 16, "crop": "center"}, (16, 16)),
        ("scale dimensions", {"width": 0, "height": 0, "crop": "center"}, (30, 60)),
        ("scale by multiplier", {"multiplier": 0.5}, (15, 30)),
        ("scale longer dimension", {"longer_size": 12}, (6, 12)),
        ("scale shorter dimension", {"shorter_size": 12}, (12, 24)),
        ("scale width", {"width": 30}, (15, 30)),
        ("scale height", {"height": 45}, (45, 90)),
        ("scale total pixels", {"megapixels": 0.01}, (72, 145)),
        ("scale to multiple", {"multiple": 16}, (16, 48)),
    ],
)
def test_resize_kinds_on_images_and_masks(kind: str, options: dict[str, Any], size: tuple[int, int]) -> None:
    image, mask = seeded(2, 30, 60, 3), seeded(2, 30, 60)
    widgets = {f"resize_type.{k}": v for k, v in options.items()}
    (resized,) = pp.ResizeImageMaskNode().execute(image, kind, "bilinear", **widgets)
    assert resized.shape == (2, *size, 3)
    (resized_mask,) = pp.ResizeImageMaskNode().execute(mask, kind, "bilinear", **widgets)
    assert resized_mask.shape == (2, *size)


def test_resize_match_size_and_centre_crop() -> None:
    image = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 4, 8, 1).repeat(1, 1, 1, 3)
    widgets = {"resize_type.match": torch.zeros(1, 4, 4), "resize_type.crop": "center"}
    (out,) = pp.ResizeImageMaskNode().execute(image, "match size", "nearest-exact", **widgets)
    # A 4x8 image matched to 4x4 with a centre crop keeps columns 2..5.
    assert torch.equal(out, image[:, :, 2:6])


def test_resize_to_multiple_covers_then_crops() -> None:
    image = seeded(1, 30, 50, 3)
    (out,) = pp.ResizeImageMaskNode().execute(
        image, "scale to multiple", "area", **{"resize_type.multiple": 8}
    )
    assert out.shape == (1, 24, 48, 3)
    scaled = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(29, 48), mode="area").movedim(1, -1)
    assert torch.allclose(out, scaled[:, 2:26])


def test_resize_checks_the_option_widgets() -> None:
    image = seeded(1, 8, 8, 3)
    with pytest.raises(ValueError, match="needs its input 'height'"):
        pp.ResizeImageMaskNode().execute(image, "scale dimensions", "area", **{"resize_type.width": 4})
    with pytest.raises(ValueError, match="outside"):
        pp.ResizeImageMaskNode().execute(
            image, "scale by multiplier", "area", **{"resize_type.multiplier": 9.0}
        )
    with pytest.raises(ValueError, match="unknown option"):
        pp.ResizeImageMaskNode().execute(image, "scale sideways", "area")


# --- batching ------------------------------------------------------------------------------------


def test_batch_images_pads_alpha_and_resizes() -> None:
    rgb, rgba = seeded(1, 4, 4, 3), seeded(2, 8, 8, 4, seed=1)
    (out,) = pp.BatchImagesNode().execute({"image0": rgb, "image1": rgba})
    assert out.shape == (3, 4, 4, 4)
    assert torch.equal(out[0, ..., :3], rgb[0]) and out[0, ..., 3].eq(1).all()
    resized = torch.nn.functional.interpolate(rgba.movedim(-1, 1), size=(4, 4), mode="bilinear")
    assert torch.allclose(out[1:], resized.movedim(1, -1))
    with pytest.raises(ValueError, match="at least one image"):
        pp.BatchImagesNode().execute({})


def test_batch_masks_and_latents() -> None:
    a, b = seeded(1, 4, 4), seeded(1, 2, 2, seed=1)
    (masks,) = pp.BatchMasksNode().execute({"mask0": a, "mask1": b})
    expected = torch.nn.functional.interpolate(b[:, None], size=(4, 4), mode="bilinear")[:, 0]
    assert torch.equal(masks[0], a[0]) and torch.allclose(masks[1], expected[0])
    la = {"samples": seeded(2, 4, 4, 4), "batch_index": [7, 8]}
    lb = {"samples": seeded(1, 4, 4, 4, seed=2)}
    (latents,) = pp.BatchLatentsNode().execute({"latent0": la, "latent1": lb})
    assert latents["batch_index"] == [7, 8, 0] and latents["samples"].shape == (3, 4, 4, 4)


# --- colour transfer -------------------------------------------------------------------------------


def lab_of(image: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_lab(image.movedim(-1, 1)).reshape(3, -1)


def test_reinhard_matches_the_references_lab_moments() -> None:
    target = 0.3 + 0.3 * seeded(1, 16, 16, 3)
    reference = 0.4 + 0.2 * seeded(1, 16, 16, 3, seed=1) * torch.tensor([1.0, 0.6, 0.3])
    (out,) = pp.ColorTransfer().execute(target, reference, "reinhard_lab", "per_frame", 1.0)
    got, want = lab_of(out), lab_of(reference)
    assert torch.allclose(got.mean(dim=1), want.mean(dim=1), atol=0.05)
    assert torch.allclose(got.std(dim=1, unbiased=False), want.std(dim=1, unbiased=False), atol=0.05)


def test_mkl_matches_the_references_lab_covariance() -> None:
    target = 0.3 + 0.3 * seeded(1, 16, 16, 3)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.7]])
    reference = 0.25 + 0.4 * seeded(1, 16, 16, 3, seed=1) @ mix.T / 1.3
    (out,) = pp.ColorTransfer().execute(target, reference, "mkl_lab", "per_frame", 1.0)
    got, want = lab_of(out), lab_of(reference)
    assert torch.allclose(got.mean(dim=1), want.mean(dim=1), atol=0.05)
    assert torch.allclose(torch.cov(got, correction=0), torch.cov(want, correction=0), atol=0.2)


def test_histogram_of_an_image_onto_itself_is_its_bins() -> None:
    image = seeded(1, 8, 8, 3)
    (out,) = pp.ColorTransfer().execute(image, image, "histogram", "per_frame", 1.0)
    assert torch.allclose(out, torch.floor(image * 255) / 255)


def test_target_frame_stats_apply_one_transform_to_all_frames() -> None:
    frames = torch.stack([0.2 + 0.3 * seeded(8, 8, 3), 0.5 + 0.3 * seeded(8, 8, 3, seed=1)])
    reference = 0.3 + 0.4 * seeded(1, 8, 8, 3, seed=2)
    for method in ("reinhard_lab", "mkl_lab", "histogram"):
        (chosen,) = pp.ColorTransfer().execute(
            frames, reference, method, "target_frame", 1.0, **{"source_stats.target_index": 1}
        )
        (alone,) = pp.ColorTransfer().execute(frames[1:], reference, method, "per_frame", 1.0)
        assert torch.allclose(chosen[1:], alone, atol=1e-5), method
        (uniform,) = pp.ColorTransfer().execute(frames, reference, method, "uniform", 1.0)
        assert uniform.shape == frames.shape and not torch.allclose(uniform[0], chosen[0], atol=1e-3)


def test_colour_transfer_strength_and_errors() -> None:
    image = seeded(1, 4, 4, 3)
    assert (
        pp.ColorTransfer().execute(image, seeded(1, 4, 4, 3, seed=1), "mkl_lab", "uniform", 0.0)[0] is image
    )
    with pytest.raises(ValueError, match="unknown option"):
        pp.ColorTransfer().execute(image, image, "mkl_lab", "per_pixel", 1.0)
    with pytest.raises(ValueError, match="RGB"):
        pp.ColorTransfer().execute(seeded(1, 4, 4, 4), image, "mkl_lab", "uniform", 1.0)


# --- through the server ----------------------------------------------------------------------------


def _saved(server: Any, frames: list[Any], node: str) -> list[np.ndarray]:
    out = []
    for d in messages(frames, "executed"):
        if d["node"] == node:
            for image in d["output"]["images"]:
                path = server.kernel.settings.output_path / image["subfolder"] / image["filename"]
                with Image.open(path) as png:
                    out.append(np.asarray(png.convert("RGB")))
    return out


async def test_dynamic_inputs_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 0xFF0000},
        },
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0x0000FF},
        },
        "3": {
            "class_type": "BatchImagesNode",
            "inputs": {"images.image0": ["1", 0], "images.image1": ["2", 0]},
        },
        "4": {
            "class_type": "ResizeImageMaskNode",
            "inputs": {
                "input": ["3", 0],
                "resize_type": "scale longer dimension",
                "resize_type.longer_size": 16,
                "scale_method": "nearest-exact",
            },
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "batch"}},
        "6": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 8, "height": 8}},
        "7": {
            "class_type": "ResizeImageMaskNode",
            "inputs": {
                "input": ["6", 0],
                "resize_type": "match size",
                "resize_type.match": ["4", 0],
                "resize_type.crop": "center",
                "scale_method": "area",
            },
        },
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "mask"}},
        "10": {
            "class_type": "ColorTransfer",
            "inputs": {
                "image_target": ["4", 0],
                "image_ref": ["2", 0],
                "method": "reinhard_lab",
                "source_stats": "target_frame",
                "source_stats.target_index": 0,
                "strength": 1.0,
            },
        },
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "colour"}},
        "12": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 2}},
        "13": {
            "class_type": "BatchLatentsNode",
            "inputs": {"latents.latent0": ["12", 0], "latents.latent1": ["12", 0]},
        },
        "14": {"class_type": "SaveLatent", "inputs": {"samples": ["13", 0], "filename_prefix": "batched"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    batch = _saved(server, frames, "5")
    # 64x32 red plus two 16x16 blue (centre-cropped to 2:1), longer side to 16.
    assert [b.shape for b in batch] == [(8, 16, 3)] * 3
    assert (batch[0] == [255, 0, 0]).all() and (batch[1] == [0, 0, 255]).all()
    masks = _saved(server, frames, "9")
    assert [m.shape for m in masks] == [(8, 16, 3)] and (np.abs(masks[0].astype(int) - 128) <= 1).all()
    coloured = _saved(server, frames, "11")
    # Every frame moved by the red frame's transform onto the blue reference: the red frame turns blue.
    assert (np.abs(coloured[0].astype(int) - [0, 0, 255]) <= 2).all()
    (latent,) = [d for d in messages(frames, "executed") if d["node"] == "14"]
    name = latent["output"]["latents"][0]["filename"]
    with safe_open(str(server.kernel.settings.output_path / name), framework="pt") as f:
        assert f.get_tensor("latent_tensor").shape == (4, 4, 4, 4)


async def test_bad_dynamic_widget_is_a_validation_error(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {
            "class_type": "ResizeImageMaskNode",
            "inputs": {
                "input": ["1", 0],
                "resize_type": "scale dimensions",
                "resize_type.width": -4,
                "resize_type.height": 8,
                "resize_type.crop": "center",
                "scale_method": "area",
            },
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    # Validation checks the widgets the chosen option brings, as the reference does.
    status, answer = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400, answer
    (reason,) = answer["node_errors"]["2"]["errors"]
    assert reason["type"] == "value_smaller_than_min" and reason["extra_info"]["input_name"] == "resize_type.width"
    # A batch node without its first image is a validation error.
    bad = {
        "1": prompt["1"],
        "2": {"class_type": "BatchImagesNode", "inputs": {"images.image1": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": bad})
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
