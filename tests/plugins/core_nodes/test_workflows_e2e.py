"""The reference's workflows end to end over HTTP, on tiny SD1 and SDXL checkpoints.

Each test writes (links) tiny checkpoints into the server's ``models/checkpoints``, posts a prompt
in the API format, waits for it on the WebSocket and checks what was written: PNGs with the
prompt and workflow in their text chunks, images that change when the workflow changes, and the
model manager's cache. The per-sampler sweep drives the KSampler plumbing directly.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.manager import get_manager
from plugins.core_nodes.sampling.samplers import SAMPLER_NAMES
from plugins.core_nodes.sampling.schedules import SCHEDULER_NAMES

from . import tiny_pipeline
from .node_helpers import messages, run_prompt

SIZE = 64  # pixels; 8 x 8 latents
WORKFLOW = {"nodes": [], "links": [], "version": 0.4, "extra": {"note": "saved by the e2e test"}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {
        family: tiny_pipeline.write_checkpoint(root / f"tiny_{family}.safetensors", family)
        for family in ("sd1", "sdxl")
    }


@pytest.fixture(scope="session")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kohya LoRA on one UNet attention layer and one CLIP-L projection of the tiny SD1 model."""
    g = torch.Generator().manual_seed(5)
    sd = {
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(
            4, tiny_pipeline.CLIP_WIDTH, generator=g
        ),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(
            32, 4, generator=g
        ),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(4.0),
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight": torch.randn(2, 128, generator=g)
        * 0.3,
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.randn(64, 2, generator=g) * 0.3,
    }
    path = tmp_path_factory.mktemp("loras") / "tiny_lora.safetensors"
    save_file(sd, str(path))
    return path


async def _server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], lora: Path | None = None
) -> Any:
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for path in checkpoints.values():
        (folder / path.name).symlink_to(path)
    if lora is not None:
        loras = tmp_path / "models" / "loras"
        loras.mkdir(parents=True, exist_ok=True)
        (loras / lora.name).symlink_to(lora)
    (tmp_path / "input").mkdir(exist_ok=True)
    return await comfy_server(plugins=["core_nodes", "models"])


def txt2img(ckpt: str, seed: int = 1, steps: int = 3, prefix: str = "ComfyUI") -> dict[str, Any]:
    """The reference's default workflow (the frontend's first graph), at tiny size."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "beautiful scenery nature glass bottle landscape", "clip": ["4", 1]},
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 8.0,
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


def with_lora_loader(
    base: dict[str, Any], lora_name: str, strength_model: float, strength_clip: float, prefix: str
) -> dict[str, Any]:
    """:func:`txt2img` with a LoraLoader (node "10") between the checkpoint and its users."""
    p = {**base}
    p["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": lora_name,
            "strength_model": strength_model,
            "strength_clip": strength_clip,
        },
    }
    for node in ("6", "7"):
        p[node] = {**base[node], "inputs": {**base[node]["inputs"], "clip": ["10", 1]}}
    p["3"] = {**base["3"], "inputs": {**base["3"]["inputs"], "model": ["10", 0]}}
    p["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": prefix}}
    return p


async def _run(server: Any, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Run ``prompt``; return the ``executed`` outputs by node, failing on any execution error."""
    frames = await run_prompt(server, prompt, **extra)
    errors = messages(frames, "execution_error")
    assert not errors, errors[0].get("exception_message")
    assert messages(frames, "execution_success"), [f.get("type") for f in frames if isinstance(f, dict)]
    return {d["node"]: d["output"] for d in messages(frames, "executed")}


def _saved(server: Any, output: dict[str, Any]) -> list[Path]:
    root = Path(server.kernel.settings.output_path)
    return [root / image["subfolder"] / image["filename"] for image in output["images"]]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _write_input(tmp_path: Path, name: str, alpha_left: int | None = None) -> None:
    """A gradient picture; with ``alpha_left`` the left half is transparent (LoadImage: mask 1 there)."""
    ramp = np.linspace(0, 255, SIZE, dtype=np.uint8)
    rgb = np.stack(
        [np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 90, np.uint8)], -1
    )
    if alpha_left is None:
        Image.fromarray(rgb, "RGB").save(tmp_path / "input" / name)
        return
    alpha = np.full((SIZE, SIZE, 1), 255, np.uint8)
    alpha[:, : SIZE // 2] = alpha_left
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / "input" / name)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
async def test_default_txt2img_workflow_writes_pngs_with_prompt_and_workflow(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], family: str
) -> None:
    server = await _server(comfy_server, tmp_path, checkpoints)
    prompt = txt2img(checkpoints[family].name, prefix=f"e2e/{family}")
    outputs = await _run(server, prompt, extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})
    (path,) = _saved(server, outputs["9"])
    assert path.name == f"{family}_00001_.png" and path.parent.name == "e2e"
    image = Image.open(path)
    assert image.size == (SIZE, SIZE)
    assert json.loads(image.text["prompt"]) == prompt
    assert json.loads(image.text["workflow"]) == WORKFLOW
    pixels = _pixels(path)
    assert pixels.std() > 1.0  # a real decode, not a flat fill

    # Same seed, same picture; another seed, another picture. The model loaded once.
    again = await _run(server, txt2img(checkpoints[family].name, prefix=f"e2e/{family}"))
    assert np.array_equal(_pixels(_saved(server, again["9"])[0]), pixels)
    other = await _run(server, txt2img(checkpoints[family].name, seed=2, prefix=f"e2e/{family}"))
    assert not np.array_equal(_pixels(_saved(server, other["9"])[0]), pixels)
    loaded = get_manager(server.kernel).loaded()
    assert [(m.kind, Path(m.path).name) for m in loaded] == [("checkpoint", checkpoints[family].name)]


async def test_img2img_and_inpaint_workflows(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    server = await _server(comfy_server, tmp_path, checkpoints)
    _write_input(tmp_path, "photo.png", alpha_left=0)
    base = txt2img(checkpoints["sd1"].name)
    load = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}

    img2img = {
        **base,
        "10": load,
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
    }
    img2img["3"] = {**base["3"], "inputs": {**base["3"]["inputs"], "latent_image": ["11", 0], "denoise": 0.6}}
    out_img2img = _pixels(_saved(server, (await _run(server, img2img))["9"])[0])

    # VAE round trip of the input, to compare the masked variants against.
    roundtrip = {
        "10": load,
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "4": base["4"],
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "roundtrip", "images": ["8", 0]}},
    }
    out_roundtrip = _pixels(_saved(server, (await _run(server, roundtrip))["9"])[0])
    assert not np.array_equal(out_img2img, out_roundtrip)

    # SetLatentNoiseMask with an all-zero mask keeps the whole latent: the round trip.
    masked = {
        **img2img,
        "12": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}},
    }
    masked["13"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["12", 0]}}
    masked["3"] = {
        **img2img["3"],
        "inputs": {**img2img["3"]["inputs"], "latent_image": ["13", 0], "denoise": 1.0},
    }
    masked["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "kept"}}
    kept = _pixels(_saved(server, (await _run(server, masked))["9"])[0])
    # Equal up to the float rounding of scaling the latent into model space and back.
    assert np.abs(kept - out_roundtrip).max() <= 1

    # With LoadImage's alpha mask (left half), that half of the latent is repainted.
    masked["13"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    masked["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "half"}}
    half = _pixels(_saved(server, (await _run(server, masked))["9"])[0])
    # (The tiny VAE's mid-block attention is global, so the change shows everywhere in pixels.)
    assert np.abs(half - out_roundtrip).mean() > 1.0

    # VAEEncodeForInpaint: the masked pixels are greyed before encoding and repainted.
    inpaint = {**base, "10": load}
    inpaint["11"] = {
        "class_type": "VAEEncodeForInpaint",
        "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6},
    }
    inpaint["3"] = {**base["3"], "inputs": {**base["3"]["inputs"], "latent_image": ["11", 0]}}
    inpaint["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "inpaint"}}
    out_inpaint = _pixels(_saved(server, (await _run(server, inpaint))["9"])[0])
    assert out_inpaint.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(out_inpaint, half)


async def test_lora_upscale_and_area_workflows(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path], lora_file: Path
) -> None:
    server = await _server(comfy_server, tmp_path, checkpoints, lora=lora_file)
    base = txt2img(checkpoints["sd1"].name)
    plain = _pixels(_saved(server, (await _run(server, base))["9"])[0])

    def with_lora(strength_model: float, strength_clip: float, prefix: str) -> dict[str, Any]:
        return with_lora_loader(base, lora_file.name, strength_model, strength_clip, prefix)

    lora = _pixels(_saved(server, (await _run(server, with_lora(1.0, 1.0, "lora")))["9"])[0])
    assert np.abs(lora - plain).mean() > 0.5
    # Strength 0 is the plain model (tests/plugins/core_nodes/test_lora.py checks the cached
    # model is never changed, bit for bit).
    zero = _pixels(_saved(server, (await _run(server, with_lora(0.0, 0.0, "zero2")))["9"])[0])
    assert np.array_equal(zero, plain)

    # Latent upscale and a second, partial pass (the "hires fix").
    hires = {**base}
    hires["20"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
    }
    hires["21"] = {
        "class_type": "KSampler",
        "inputs": {**base["3"]["inputs"], "latent_image": ["20", 0], "denoise": 0.5, "steps": 2},
    }
    hires["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["4", 2]}}
    hires["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "hires"}}
    (path,) = _saved(server, (await _run(server, hires))["9"])
    assert Image.open(path).size == (96, 96)

    # Area and mask conditioning: a second prompt on the right half, a masked third one.
    area = {**base}
    area["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
    area["30"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red boat", "clip": ["4", 1]}}
    area["31"] = {
        "class_type": "ConditioningSetArea",
        "inputs": {"conditioning": ["30", 0], "width": 64, "height": 128, "x": 64, "y": 0, "strength": 1.0},
    }
    area["32"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    area["33"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "snow", "clip": ["4", 1]}}
    area["34"] = {
        "class_type": "ConditioningSetMask",
        "inputs": {
            "conditioning": ["33", 0],
            "mask": ["32", 0],
            "strength": 0.8,
            "set_cond_area": "mask bounds",
        },
    }
    area["35"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["31", 0]},
    }
    area["36"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["35", 0], "conditioning_2": ["34", 0]},
    }
    area["3"] = {**base["3"], "inputs": {**base["3"]["inputs"], "positive": ["36", 0]}}
    area["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "area"}}
    regional = _pixels(_saved(server, (await _run(server, area))["9"])[0])
    area["3"] = {**area["3"], "inputs": {**area["3"]["inputs"], "positive": ["6", 0]}}
    area["9"] = {**base["9"], "inputs": {**base["9"]["inputs"], "filename_prefix": "no_area"}}
    without = _pixels(_saved(server, (await _run(server, area))["9"])[0])
    assert regional.shape == without.shape == (128, 128, 3)
    assert np.abs(regional - without).mean() > 0.5


async def test_free_releases_the_loaded_models(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    server = await _server(comfy_server, tmp_path, checkpoints)
    await _run(server, txt2img(checkpoints["sd1"].name))
    manager = get_manager(server.kernel)
    (entry,) = manager._entries.values()
    unet = weakref.ref(entry.value.unet)
    assert manager.loaded()

    async with server.post("/free", json={"unload_models": True, "free_memory": True}) as resp:
        assert resp.status == 200
    for _ in range(100):  # the executor drops its cached outputs on its next idle tick
        gc.collect()
        if unet() is None:
            break
        await asyncio.sleep(0.05)
    assert manager.loaded() == []
    assert unet() is None, "the UNet is still referenced after /free"

    # The next prompt loads the checkpoint again and runs.
    await _run(server, txt2img(checkpoints["sd1"].name))
    assert len(manager.loaded()) == 1


async def test_a_broken_checkpoint_is_a_clear_error(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    server = await _server(comfy_server, tmp_path, {})
    (tmp_path / "models" / "checkpoints" / "broken.safetensors").write_bytes(b"not a model at all")
    frames = await run_prompt(server, txt2img("broken.safetensors"))
    (error,) = messages(frames, "execution_error")
    assert error["node_id"] == "4"
    assert "broken.safetensors" in error["exception_message"]


# --- every sampler x scheduler on the tiny models, through the KSampler plumbing ---------------


@pytest.fixture(scope="module")
def tiny_stacks(checkpoints: dict[str, Path]) -> dict[str, Any]:
    out = {}
    for family, path in checkpoints.items():
        model, clip, _vae = adapters.load_checkpoint(path)
        assert clip is not None
        cond, pooled = clip.encode("a cat")
        empty, empty_pooled = clip.encode("")
        out[family] = (model, [[cond, {"pooled_output": pooled}]], [[empty, {"pooled_output": empty_pooled}]])
    return out


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_and_scheduler_gives_finite_latents(
    tiny_stacks: dict[str, Any], sampler: str, scheduler: str
) -> None:
    # SD1 for all pairs; SDXL (the other latent format and the ADM path) on one scheduler each.
    families = ["sd1", "sdxl"] if scheduler == "karras" else ["sd1"]
    for family in families:
        model, positive, negative = tiny_stacks[family]
        latent = {"samples": torch.zeros(1, 4, 4, 4)}
        out = run_ksampler(model, 3, 2, 4.0, sampler, scheduler, positive, negative, latent)["samples"]
        assert out.shape == (1, 4, 4, 4)
        assert torch.isfinite(out).all(), f"{family} {sampler} {scheduler}"
        assert out.abs().max() > 0


async def test_split_files_workflow_unet_dual_clip_and_vae_loaders(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    """SDXL from separate files: UNETLoader + DualCLIPLoader + VAELoader, as the split-file
    templates wire them; the picture equals the single-file checkpoint's."""
    server = await _server(comfy_server, tmp_path, checkpoints)
    sd = tiny_pipeline.checkpoint_dict("sdxl")
    models = tmp_path / "models"
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (models / folder).mkdir(parents=True, exist_ok=True)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    save_file(part("model.diffusion_model."), str(models / "diffusion_models" / "unet.safetensors"))
    save_file(part("first_stage_model."), str(models / "vae" / "vae.safetensors"))
    clip_l = {
        "text_model." + k: v for k, v in part("conditioner.embedders.0.transformer.text_model.").items()
    }
    save_file(clip_l, str(models / "text_encoders" / "clip_l.safetensors"))
    save_file(part("conditioner.embedders.1.model."), str(models / "text_encoders" / "clip_g.safetensors"))

    single = txt2img(checkpoints["sdxl"].name, prefix="single")
    split = {**single}
    split["4"] = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "unet.safetensors", "weight_dtype": "default"},
    }
    split["10"] = {
        "class_type": "DualCLIPLoader",
        "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "type": "sdxl"},
    }
    split["11"] = {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}}
    split["6"] = {**single["6"], "inputs": {**single["6"]["inputs"], "clip": ["10", 0]}}
    split["7"] = {**single["7"], "inputs": {**single["7"]["inputs"], "clip": ["10", 0]}}
    split["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["11", 0]}}
    split["9"] = {**single["9"], "inputs": {**single["9"]["inputs"], "filename_prefix": "split"}}
    from_split = _pixels(_saved(server, (await _run(server, split))["9"])[0])
    from_single = _pixels(_saved(server, (await _run(server, single))["9"])[0])
    assert np.array_equal(from_split, from_single)
    kinds = sorted(m.kind.split(":")[0] for m in get_manager(server.kernel).loaded())
    assert kinds == ["checkpoint", "clip", "diffusion_model", "vae"]


def test_plugin_import_leaves_torch_unloaded() -> None:
    """The server answers HTTP before torch is imported: nothing at plugin import pulls it in."""
    import subprocess
    import sys

    code = "import sys, plugins.core_nodes.plugin; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_sdxl_size_conditioning_defaults_follow_the_reference(tiny_stacks: dict[str, Any]) -> None:
    """No size keys (plain CLIPTextEncode): width / height are the latent's size times 8, the
    target size follows them and the crop is 0; CLIPTextEncodeSDXL's keys are used as given."""
    from plugins.core_nodes.models.unet import sdxl_adm

    model, positive, _ = tiny_stacks["sdxl"]
    pooled = positive[0][1]["pooled_output"]
    x = torch.zeros(2, 4, 12, 9)
    got = model.adm({"pooled_output": pooled}, x)
    torch.testing.assert_close(got, sdxl_adm(pooled.expand(2, -1), 96, 72, 0, 0, 96, 72))
    keys = {
        "width": 1024,
        "height": 768,
        "crop_w": 16,
        "crop_h": 8,
        "target_width": 640,
        "target_height": 896,
    }
    got = model.adm({"pooled_output": pooled, **keys}, x)
    torch.testing.assert_close(got, sdxl_adm(pooled.expand(2, -1), 768, 1024, 8, 16, 896, 640))
    sd1_model, _, _ = tiny_stacks["sd1"]
    assert sd1_model.adm({}, x) is None


def test_clip_loader_reads_a_standalone_clip_l(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    sd = tiny_pipeline.checkpoint_dict("sd1")
    prefix = "cond_stage_model.transformer."
    path = tmp_path / "clip_l.safetensors"
    save_file({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, str(path))
    standalone = adapters.load_clip([path], "stable_diffusion", "default")
    _, from_checkpoint, _ = adapters.load_checkpoint(checkpoints["sd1"])
    assert from_checkpoint is not None
    for text in ("a (cat:1.3) on a mat", "x " * 100):
        a, b = standalone.encode(text), from_checkpoint.encode(text)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    skipped = standalone.with_last_layer(-2)
    assert not torch.equal(skipped.encode("a cat")[0], standalone.encode("a cat")[0])
    assert torch.equal(standalone.with_last_layer(-1).encode("a cat")[0], standalone.encode("a cat")[0])
    with pytest.raises(Exception, match="not supported"):
        adapters.load_clip([path], "flux2", "default")
