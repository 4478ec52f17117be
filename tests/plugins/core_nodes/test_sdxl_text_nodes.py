"""CLIPTextEncodeSDXL / CLIPTextEncodeSDXLRefiner: interface, tokens, ADM options, and runs
through the real server on a tiny SDXL checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.unet import ADM_SCALAR_DIM
from plugins.core_nodes.nodes.conditioning_sdxl import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner

from . import tiny_pipeline
from .golden import GOLDEN_DIR
from .node_helpers import messages, run_prompt

SIZE = 64
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

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _golden() -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / "object_info_core.json").read_text())


@pytest.fixture(scope="module")
def sdxl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("sdxl") / "tiny_sdxl.safetensors", "sdxl")


@pytest.fixture(scope="module")
def sdxl(sdxl_checkpoint: Path) -> tuple[Any, Any]:
    model, clip, _vae = adapters.load_checkpoint(sdxl_checkpoint)
    assert clip is not None
    return model, clip


def _hand_adm(pooled: torch.Tensor, scalars: list[float]) -> torch.Tensor:
    """The reference's formula: each scalar as a sinusoidal embedding (cos half, then sin half,
    frequencies 10000^(-i/half)), concatenated after the pooled text embedding."""
    half = ADM_SCALAR_DIM // 2
    parts = []
    for value in scalars:
        freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
        parts += [math.cos(value * f) for f in freqs] + [math.sin(value * f) for f in freqs]
    return torch.cat([pooled, torch.tensor([parts], dtype=pooled.dtype)], dim=1)


# --- interface ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner"])
async def test_object_info_is_the_reference(comfy_server: Any, name: str) -> None:
    golden = _golden()[name]
    server = await comfy_server(plugins=["core_nodes"])
    status, info = await server.json("GET", f"/object_info/{name}")
    assert status == 200
    for field in FIELDS:
        assert info[name][field] == golden[field], field


def test_shim_module_serves_the_registered_classes() -> None:
    # smZNodes: `from comfy_extras.nodes_clip_sdxl import CLIPTextEncodeSDXL` and calls .encode(...)
    assert CLIPTextEncodeSDXL.FUNCTION == "encode" and CLIPTextEncodeSDXLRefiner.FUNCTION == "encode"


# --- behaviour on the model --------------------------------------------------------------------


def test_options_carry_sizes_and_text_goes_to_its_encoder(sdxl: tuple[Any, Any]) -> None:
    _, clip = sdxl
    ((cond, options),) = CLIPTextEncodeSDXL().encode(clip, 1024, 768, 16, 8, 640, 896, "a red boat", "snow")[
        0
    ]
    assert {k: v for k, v in options.items() if k != "pooled_output"} == {
        "width": 1024,
        "height": 768,
        "crop_w": 16,
        "crop_h": 8,
        "target_width": 640,
        "target_height": 896,
    }
    by_hand = {"g": clip.tokenize("a red boat")["g"], "l": clip.tokenize("snow")["l"]}
    want, want_pooled = clip.encode_from_tokens(by_hand, return_pooled=True)
    torch.testing.assert_close(cond, want)
    torch.testing.assert_close(options["pooled_output"], want_pooled)
    # Swapping the prompts changes the result: each text reaches only its own encoder.
    swapped = CLIPTextEncodeSDXL().encode(clip, 1024, 768, 16, 8, 640, 896, "snow", "a red boat")[0][0][0]
    assert not torch.equal(swapped, cond)


def test_shorter_prompt_is_padded_with_empty_chunks(sdxl: tuple[Any, Any]) -> None:
    _, clip = sdxl
    long_text = " ".join(["mountain"] * 100)  # two 77-token chunks
    assert len(clip.tokenize(long_text)["g"]) == 2
    cond = CLIPTextEncodeSDXL().encode(clip, 64, 64, 0, 0, 64, 64, long_text, "cat")[0][0][0]
    assert cond.shape[1] == 2 * 77
    empty = clip.tokenize("")
    padded = {"g": clip.tokenize(long_text)["g"], "l": clip.tokenize("cat")["l"] + empty["l"]}
    torch.testing.assert_close(cond, clip.encode_from_tokens(padded))
    # And the other way round: a long text_l pads text_g.
    cond = CLIPTextEncodeSDXL().encode(clip, 64, 64, 0, 0, 64, 64, "cat", long_text)[0][0][0]
    padded = {"g": clip.tokenize("cat")["g"] + empty["g"], "l": clip.tokenize(long_text)["l"]}
    torch.testing.assert_close(cond, clip.encode_from_tokens(padded))


def test_target_size_changes_the_adm_vector_as_the_formula_says(sdxl: tuple[Any, Any]) -> None:
    model, clip = sdxl
    x = torch.zeros(1, 4, 8, 8)
    adms = []
    for target in ((1024, 1024), (640, 896)):
        ((_, options),) = CLIPTextEncodeSDXL().encode(clip, 1024, 768, 16, 8, *target, "a", "a")[0]
        got = model.adm(options, x)
        # Order of the scalars: height, width, crop_h, crop_w, target_height, target_width.
        want = _hand_adm(options["pooled_output"], [768, 1024, 8, 16, target[1], target[0]])
        # float32 sinusoids of arguments up to ~1000 agree with the float64 ones to ~1e-4.
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
        adms.append(got)
    assert not torch.equal(adms[0], adms[1])


def test_refiner_options(sdxl: tuple[Any, Any]) -> None:
    _, clip = sdxl
    ((cond, options),) = CLIPTextEncodeSDXLRefiner().encode(clip, 2.5, 512, 768, "a cat")[0]
    assert options["aesthetic_score"] == 2.5 and options["width"] == 512 and options["height"] == 768
    want, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    torch.testing.assert_close(cond, want)
    torch.testing.assert_close(options["pooled_output"], pooled)


def test_sd1_clip_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tiny_pipeline.write_checkpoint(tmp_path / "tiny_sd1.safetensors", "sd1")
    _, clip, _ = adapters.load_checkpoint(path)
    with pytest.raises(ValueError, match="needs an SDXL CLIP with clip_g and clip_l"):
        CLIPTextEncodeSDXL().encode(clip, 64, 64, 0, 0, 64, 64, "a", "b")


# --- through the server ------------------------------------------------------------------------


def _prompt(ckpt: str, positive: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": positive,
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 3,
                "steps": 2,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def _sdxl_encode(text: str, target: int, crop: int = 0) -> dict[str, Any]:
    inputs = {
        "clip": ["4", 1],
        "width": SIZE,
        "height": SIZE,
        "crop_w": crop,
        "crop_h": crop,
        "target_width": target,
        "target_height": target,
        "text_g": text,
        "text_l": text,
    }
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": inputs}


async def _pixels(server: Any, prompt: dict[str, Any]) -> np.ndarray:
    frames = await run_prompt(server, prompt)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    (done,) = [d for d in messages(frames, "executed") if d["node"] == "9"]
    (image,) = done["output"]["images"]
    path = Path(server.kernel.settings.output_path) / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


async def test_ksampler_with_sdxl_encode_equals_plain_encode_at_the_default_sizes(
    comfy_server: Any, tmp_path: Path, sdxl_checkpoint: Path
) -> None:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / sdxl_checkpoint.name).symlink_to(sdxl_checkpoint)
    server = await comfy_server(plugins=["core_nodes", "models"])
    text = "a lighthouse at dusk"
    plain = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}
    base = await _pixels(server, _prompt(sdxl_checkpoint.name, plain, "plain"))
    # A plain CLIPTextEncode means: size = latent size x 8, target = size, no crop.
    same = await _pixels(server, _prompt(sdxl_checkpoint.name, _sdxl_encode(text, SIZE), "sdxl"))
    assert np.array_equal(base, same)
    other = await _pixels(server, _prompt(sdxl_checkpoint.name, _sdxl_encode(text, 4 * SIZE, 32), "target"))
    assert not np.array_equal(base, other)
