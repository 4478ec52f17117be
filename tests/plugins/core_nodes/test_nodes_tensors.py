"""Image, mask, latent and conditioning nodes: unit checks, plus graphs run over HTTP."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.nodes import conditioning as C
from plugins.core_nodes.nodes import image as I  # noqa: E741
from plugins.core_nodes.nodes import latent as L
from plugins.core_nodes.nodes import mask as M
from plugins.core_nodes.nodes import primitives as P

from .node_helpers import messages, run_prompt, start
from .toy_stack import TOY_PLUGIN, ToyClip, ToyVAE


def test_image_nodes() -> None:
    img = torch.rand(2, 8, 16, 3)
    assert torch.equal(I.ImageInvert().invert(img)[0], 1.0 - img)
    assert I.ImageScale().upscale(img, "bilinear", 32, 0, "disabled")[0].shape == (2, 16, 32, 3)
    assert I.ImageScale().upscale(img, "lanczos", 8, 8, "center")[0].shape == (2, 8, 8, 3)
    assert I.ImageScaleBy().upscale(img, "nearest-exact", 0.5)[0].shape == (2, 4, 8, 3)
    other = torch.rand(1, 4, 4, 3)
    assert I.ImageBatch().batch(img, other)[0].shape == (3, 8, 16, 3)
    cropped = I.ImageCrop().crop(img, 4, 2, 10, 3)[0]
    assert torch.equal(cropped, img[:, 3:5, 10:14, :])
    solid = I.EmptyImage().generate(4, 2, 1, 0x102030)[0]
    assert solid.shape == (1, 2, 4, 3)
    assert torch.allclose(solid[0, 0, 0], torch.tensor([0x10, 0x20, 0x30]) / 255.0)
    batches = I.RebatchImages().rebatch([img, other[:, :, :, :]], [2])[0]
    assert [b.shape[0] for b in batches] == [2, 1]


def test_pad_for_outpaint() -> None:
    img = torch.rand(1, 100, 100, 3)
    padded, mask = I.ImagePadForOutpaint().expand_image(img, 8, 0, 0, 16, 10)
    assert padded.shape == (1, 116, 108, 3) and mask.shape == (1, 116, 108)
    assert torch.equal(padded[:, :100, 8:, :], img)
    assert float(padded[0, 110, 0, 0]) == 0.5
    assert float(mask[0, 110, 50]) == 1.0 and float(mask[0, 50, 0]) == 1.0
    # Inside, the mask fades quadratically from the padded left edge over 10 px; top never fades.
    assert float(mask[0, 50, 8]) == pytest.approx(1.0)
    assert float(mask[0, 50, 8 + 5]) == pytest.approx(0.25)
    assert float(mask[0, 50, 8 + 50]) == 0.0
    assert float(mask[0, 0, 58]) == 0.0


def test_mask_nodes() -> None:
    solid = M.SolidMask().solid(0.5, 4, 3)[0]
    assert solid.shape == (1, 3, 4) and float(solid.mean()) == 0.5
    assert torch.equal(M.InvertMask().invert(solid)[0], 1.0 - solid)
    dest = torch.zeros(1, 8, 8)
    src = torch.ones(1, 4, 4)
    added = M.MaskComposite().combine(dest, src, 6, 6, "add")[0]
    assert float(added.sum()) == 4.0 and float(added[0, 7, 7]) == 1.0
    xored = M.MaskComposite().combine(torch.ones(1, 2, 2), torch.ones(1, 2, 2), 0, 0, "xor")[0]
    assert float(xored.sum()) == 0.0
    assert M.CropMask().crop(torch.rand(1, 8, 8), 2, 1, 3, 4)[0].shape == (1, 4, 3)
    dot = torch.zeros(1, 7, 7)
    dot[0, 3, 3] = 1.0
    assert float(M.GrowMask().expand_mask(dot, 1, True)[0].sum()) == 5.0
    assert float(M.GrowMask().expand_mask(dot, 1, False)[0].sum()) == 9.0
    assert (
        float(M.GrowMask().expand_mask(M.GrowMask().expand_mask(dot, 2, False)[0], -2, False)[0].sum()) == 1.0
    )
    feathered = M.FeatherMask().feather(torch.ones(1, 4, 4), 2, 0, 0, 0)[0]
    assert feathered[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0]
    img = torch.rand(1, 4, 4, 3)
    assert torch.equal(M.ImageToMask().image_to_mask(img, "green")[0], img[..., 1])
    assert M.MaskToImage().mask_to_image(solid)[0].shape == (1, 3, 4, 3)
    assert M.ThresholdMask().image_to_mask(torch.tensor([[[0.2, 0.7]]]), 0.5)[0].tolist() == [[[0.0, 1.0]]]


def test_grow_mask_stops_growing_once_nothing_changes() -> None:
    dot = torch.zeros(1, 64, 64)
    dot[0, 10, 20] = 1.0
    # Far more steps than the mask is wide: the dot fills it, or vanishes, as step by step.
    assert torch.equal(M.GrowMask().expand_mask(dot, 16384, True)[0], torch.ones_like(dot))
    assert torch.equal(M.GrowMask().expand_mask(dot, -16384, False)[0], torch.zeros_like(dot))
    near = M.GrowMask().expand_mask(dot, 3, True)[0]
    assert float(near.sum()) == 25.0  # a diamond of radius 3, well inside the mask
    # The widget's extreme on a full-size mask returns at once (16384 steps took minutes).
    started = time.perf_counter()
    M.GrowMask().expand_mask(torch.ones(1, 512, 512), -16384, False)
    assert time.perf_counter() - started < 5.0


def test_latent_nodes() -> None:
    empty = L.EmptyLatentImage().generate(64, 32, 3)[0]
    assert empty["samples"].shape == (3, 4, 4, 8)
    up = L.LatentUpscale().upscale(empty, "bilinear", 128, 0, "disabled")[0]
    assert up["samples"].shape == (3, 4, 8, 16)
    assert L.LatentUpscaleBy().upscale(empty, "bislerp", 2.0)[0]["samples"].shape == (3, 4, 8, 16)
    base = {"samples": torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 4, 2, 2).clone()}
    picked = L.LatentFromBatch().frombatch(base, 1, 2)[0]
    assert picked["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0] and picked["batch_index"] == [1, 2]
    # A negative index counts from the end of the batch; anything past either end is clamped.
    last = L.LatentFromBatch().frombatch(base, -1, 3)[0]
    assert last["samples"][:, 0, 0, 0].tolist() == [3.0] and last["batch_index"] == [3]
    assert L.LatentFromBatch().frombatch(base, -9, 1)[0]["batch_index"] == [0]
    repeated = L.RepeatLatentBatch().repeat(picked, 2)[0]
    assert repeated["samples"].shape[0] == 4 and repeated["batch_index"] == [1, 2, 3, 4]
    a = {"samples": torch.zeros(1, 4, 8, 8)}
    b = {"samples": torch.ones(1, 4, 4, 4)}
    comp = L.LatentComposite().composite(a, b, 16, 8, 0)[0]["samples"]
    assert float(comp.sum()) == 4 * 4 * 4 and float(comp[0, 0, 1, 2]) == 1.0
    blend = L.LatentBlend().blend(a, {"samples": torch.ones(1, 4, 8, 8)}, 0.25)[0]["samples"]
    assert torch.allclose(blend, torch.full((1, 4, 8, 8), 0.75))
    masked = L.SetLatentNoiseMask().set_mask(a, torch.ones(16, 16))[0]
    assert masked["noise_mask"].shape == (1, 1, 16, 16) and "noise_mask" not in a


def test_vae_nodes_with_the_toy_vae() -> None:
    vae = ToyVAE()
    pixels = torch.rand(1, 20, 36, 3)
    latent = L.VAEEncode().encode(vae, pixels)[0]["samples"]
    assert latent.shape == (1, 4, 2, 4)  # cropped to multiples of 8 first
    assert L.VAEDecode().decode(vae, {"samples": latent})[0].shape == (1, 16, 32, 3)
    assert L.VAEDecodeTiled().decode(vae, {"samples": latent}, 64, 64)[0].shape == (1, 16, 32, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 4:8] = 1.0
    inpaint = L.VAEEncodeForInpaint().encode(vae, torch.rand(1, 16, 16, 3), mask, 2)[0]
    assert inpaint["noise_mask"].shape == (1, 1, 16, 16)
    assert float(inpaint["noise_mask"].sum()) > float(mask.sum())  # grown
    pos, neg, lat = C.InpaintModelConditioning().encode(
        [[torch.zeros(1, 77, 8), {}]], [[torch.zeros(1, 77, 8), {}]], torch.rand(1, 16, 16, 3), vae, mask
    )
    assert pos[0][1]["concat_latent_image"].shape == (1, 4, 2, 2) and "concat_mask" in neg[0][1]
    assert "noise_mask" in lat


def test_conditioning_nodes() -> None:
    (cond,) = C.CLIPTextEncode().encode(ToyClip(), "four")
    assert cond[0][0].shape == (1, 77, 8) and cond[0][1]["pooled_output"].shape == (1, 8)
    assert C.CLIPSetLastLayer().set_last_layer(ToyClip(), -2)[0].layer == -2
    other = [[torch.ones(1, 77, 8), {"pooled_output": torch.ones(1, 8)}]]
    assert len(C.ConditioningCombine().combine(cond, other)[0]) == 2
    avg = C.ConditioningAverage().addWeighted(cond, other, 0.25)[0][0]
    assert torch.allclose(avg[0], 0.25 * cond[0][0] + 0.75)
    long = [[torch.ones(1, 154, 8), {}]]
    assert C.ConditioningAverage().addWeighted(long, other, 0.5)[0][0][0].shape == (1, 154, 8)
    assert C.ConditioningConcat().concat(cond, other)[0][0][0].shape == (1, 154, 8)
    area = C.ConditioningSetArea().append(cond, 256, 128, 64, 32, 0.7)[0][0][1]
    assert area["area"] == (16, 32, 4, 8) and area["strength"] == 0.7
    assert "area" not in cond[0][1]  # inputs are never mutated
    pct = C.ConditioningSetAreaPercentage().append(cond, 0.5, 0.25, 0.1, 0.2, 1.0)[0][0][1]
    assert pct["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    masked = C.ConditioningSetMask().append(cond, torch.ones(8, 8), "mask bounds", 0.5)[0][0][1]
    assert (
        masked["mask"].shape == (1, 8, 8) and masked["set_area_to_bounds"] and masked["mask_strength"] == 0.5
    )
    zero = C.ConditioningZeroOut().zero_out(other)[0][0]
    assert float(zero[0].abs().sum()) == 0 and float(zero[1]["pooled_output"].abs().sum()) == 0
    ranged = C.ConditioningSetTimestepRange().set_range(cond, 0.2, 0.8)[0][0][1]
    assert (ranged["start_percent"], ranged["end_percent"]) == (0.2, 0.8)
    assert C.ConditioningSetAreaStrength().append(cond, 2.0)[0][0][1]["strength"] == 2.0


def test_primitives() -> None:
    assert P.PrimitiveInt().execute(5) == (5,)
    assert P.PrimitiveString.INPUT_TYPES()["required"]["value"][0] == "STRING"


async def test_image_graph_over_http(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0x0000FF},
        },
        "2": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 0.5},
        },
        "3": {
            "class_type": "ImagePadForOutpaint",
            "inputs": {"image": ["2", 0], "left": 8, "top": 0, "right": 0, "bottom": 0, "feathering": 0},
        },
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 1]}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "g"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    out = server.kernel.settings.output_path
    with Image.open(out / "g_00001_.png") as img:
        padded = np.asarray(img.convert("RGB"))
    with Image.open(out / "g_00002_.png") as img:
        mask = np.asarray(img.convert("L"))
    assert padded.shape == (8, 24, 3)
    assert tuple(padded[0, 0]) == (127, 127, 127) and tuple(padded[0, 20]) == (0, 0, 255)
    assert (mask[:, :8] == 255).all() and (mask[:, 8:] == 0).all()


async def test_img2img_inpaint_and_area_workflow_over_http(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", TOY_PLUGIN])
    sampler = {"seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "normal"}
    prompt = {
        "1": {"class_type": "ToyStackLoader", "inputs": {"bias": 0.2}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a dog"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {
            "class_type": "ConditioningSetArea",
            "inputs": {"conditioning": ["2", 0], "width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0},
        },
        "5": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["4", 0]}},
        "6": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0x808080}},
        "7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "8": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["6", 0], "vae": ["1", 2], "mask": ["7", 0], "grow_mask_by": 6}},
        "9": {
            "class_type": "KSampler",
            "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["3", 0], "latent_image": ["8", 0], "denoise": 0.5, **sampler},
        },
        "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["9", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}},
        "11": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["1", 0], "add_noise": "enable", "noise_seed": 4, "positive": ["5", 0], "negative": ["3", 0],
                "latent_image": ["10", 0], "start_at_step": 1, "end_at_step": 10000,
                "return_with_leftover_noise": "disable", **{k: v for k, v in sampler.items() if k != "seed"},
            },
        },
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "chain"}},
    }  # fmt: skip
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    with Image.open(server.kernel.settings.output_path / "chain_00001_.png") as img:
        assert img.size == (192, 192)
        assert np.isfinite(np.asarray(img, dtype=np.float32)).all()


async def test_loader_without_model_stack_fails_clearly(comfy_server: Any, tmp_path: Any) -> None:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"x")
    server = await comfy_server(plugins=["core_nodes", "models"])
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    try:
        import plugins.core_nodes.models.adapters  # noqa: F401
    except ModuleNotFoundError:
        frames = await run_prompt(server, prompt)
        errors = messages(frames, "execution_error")
        assert errors and errors[0]["node_id"] == "1"
        assert "model loading is not available" in errors[0]["exception_message"]
    else:  # the model stack is wired in: the same graph must not fail on the loader's account
        frames = await run_prompt(server, prompt)
        assert all(
            e["node_id"] != "1" or "not available" not in e["exception_message"]
            for e in messages(frames, "execution_error")
        )
