"""The base module's remaining group-A nodes: latent crop / flip / rotate, ConditioningMultiply,
LoadImageOutput, CheckpointLoader (with its YAML config), DiffusersLoader and
unCLIPCheckpointLoader.

Latent transforms are checked against torch formulas written here; DiffusersLoader against
diffusers itself: a tiny folder written by ``save_pretrained`` must give the UNet output, the
decoded image and the text encoding that diffusers / transformers compute from the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.clip_vision import clip_vision_from_checkpoint, load_clip_vision
from plugins.core_nodes.models.diffusers_format import DiffusersError, load_diffusers, unet_to_single_file
from plugins.core_nodes.nodes.conditioning import ConditioningMultiply
from plugins.core_nodes.nodes.latent import LatentCrop, LatentFlip, LatentRotate

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt, start
from .test_clip_vision_nodes import _reference_model, _to_openclip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- latent transforms ---------------------------------------------------------------------------


def _latent() -> dict[str, Any]:
    samples = torch.arange(2 * 4 * 20 * 24, dtype=torch.float32).reshape(2, 4, 20, 24)
    return {"samples": samples, "noise_mask": torch.ones(2, 1, 160, 192), "batch_index": [3, 4]}


@pytest.mark.parametrize(
    ("width", "height", "x", "y", "window"),
    [
        (64, 80, 16, 24, (3, 13, 2, 10)),  # (y0, y1, x0, x1) in latent pixels
        (512, 512, 0, 0, (0, 20, 0, 24)),  # larger than the latent: everything
        (64, 64, 1000, 1000, (12, 20, 16, 24)),  # start kept 8 latent pixels from the far edges
        (72, 64, 15, 7, (0, 8, 1, 10)),  # pixel offsets round down to whole latent pixels
    ],
)
def test_latent_crop(width: int, height: int, x: int, y: int, window: tuple[int, int, int, int]) -> None:
    latent = _latent()
    (out,) = LatentCrop().crop(latent, width, height, x, y)
    y0, y1, x0, x1 = window
    assert torch.equal(out["samples"], latent["samples"][:, :, y0:y1, x0:x1])
    assert out["noise_mask"] is latent["noise_mask"] and out["batch_index"] == [3, 4]


def test_latent_flip_and_rotate() -> None:
    latent = _latent()
    s = latent["samples"]
    (vertical,) = LatentFlip().flip(latent, "x-axis: vertically")
    (horizontal,) = LatentFlip().flip(latent, "y-axis: horizontally")
    assert torch.equal(vertical["samples"], s[:, :, range(19, -1, -1), :])
    assert torch.equal(horizontal["samples"], s[:, :, :, range(23, -1, -1)])
    turned = {r: LatentRotate().rotate(latent, r)[0]["samples"] for r in ("none", "90 degrees", "180 degrees", "270 degrees")}
    assert torch.equal(turned["none"], s)
    # Clockwise by 90: out[i, j] = in[H - 1 - j, i].
    expected = torch.empty(2, 4, 24, 20)
    for i in range(24):
        for j in range(20):
            expected[:, :, i, j] = s[:, :, 19 - j, i]
    assert torch.equal(turned["90 degrees"], expected)
    assert torch.equal(turned["180 degrees"], s.flip(-1).flip(-2))
    assert torch.equal(turned["270 degrees"], expected.flip(-1).flip(-2))
    assert latent["samples"] is s and torch.equal(s, _latent()["samples"])  # input untouched


def test_conditioning_multiply_scales_tensor_and_pooled() -> None:
    cond = [[torch.ones(1, 3, 4), {"pooled_output": torch.full((1, 4), 2.0), "strength": 0.5}], [torch.ones(1, 2, 4), {}]]
    (out,) = ConditioningMultiply().multiply(cond, -1.5)
    assert torch.equal(out[0][0], torch.full((1, 3, 4), -1.5)) and torch.equal(out[1][0], torch.full((1, 2, 4), -1.5))
    assert torch.equal(out[0][1]["pooled_output"], torch.full((1, 4), -3.0)) and out[0][1]["strength"] == 0.5
    assert out[1][1] == {} and torch.equal(cond[0][1]["pooled_output"], torch.full((1, 4), 2.0))


async def test_latent_nodes_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "2": {"class_type": "LatentCrop", "inputs": {"samples": ["1", 0], "width": 64, "height": 64, "x": 16, "y": 8}},
        "3": {"class_type": "LatentRotate", "inputs": {"samples": ["2", 0], "rotation": "90 degrees"}},
        "4": {"class_type": "LatentFlip", "inputs": {"samples": ["3", 0], "flip_method": "y-axis: horizontally"}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "t"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
    out = load_file(str(server.kernel.settings.output_path / saved["filename"]))["latent_tensor"]
    assert out.shape == (1, 4, 8, 8)
    bad = dict(prompt)
    bad["3"] = {"class_type": "LatentRotate", "inputs": {"samples": ["2", 0], "rotation": "45 degrees"}}
    status, body = await server.json("POST", "/prompt", json={"prompt": bad})
    assert status == 400 and "node_errors" in body


# --- LoadImageOutput -----------------------------------------------------------------------------


async def test_load_image_output_reads_annotated_output_names(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "output").mkdir()
    (tmp_path / "input").mkdir()
    Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "output" / "made.png")
    Image.new("RGB", (6, 4), (250, 0, 0)).save(tmp_path / "input" / "made.png")
    server = await start(comfy_server)
    status, info = await server.json("GET", "/object_info/LoadImageOutput")
    assert status == 200 and info["LoadImageOutput"]["input"]["required"]["image"][1]["image_folder"] == "output"

    def prompt(name: str) -> dict[str, Any]:
        return {
            "1": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}},
        }

    # The frontend's remote combo offers the names of GET /internal/files/output as they are.
    status, listed = await server.json("GET", "/internal/files/output")
    assert (status, listed) == (200, ["made.png [output]"])
    frames = await run_prompt(server, prompt(listed[0]))
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["images"]
    with Image.open(tmp_path / "output" / saved["filename"]) as img:
        assert img.getpixel((0, 0)) == (10, 200, 30)
    # Unannotated names are input-folder names, as the reference's LoadImage resolves them.
    frames = await run_prompt(server, prompt("made.png"))
    (saved,) = messages(frames, "executed")[-1]["output"]["images"]
    with Image.open(tmp_path / "output" / saved["filename"]) as img:
        assert img.getpixel((0, 0)) == (250, 0, 0)
    for name in ("missing.png [output]", "../output/made.png"):
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt(name)})
        assert status == 400 and "Invalid image file" in json.dumps(body)


# --- CheckpointLoader ----------------------------------------------------------------------------

V_CONFIG = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.18215
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        layer: hidden
        layer_idx: -2
"""


async def test_checkpoint_loader_applies_the_configs_prediction_and_clip_skip(comfy_server: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    (models / "configs").mkdir(parents=True)
    (models / "configs" / "v.yaml").write_text(V_CONFIG)
    (models / "configs" / "eps.yaml").write_text("model:\n  params:\n    scale_factor: 0.18215\n")
    (models / "configs" / "bad.yaml").write_text("just: [text")
    server = await comfy_server(plugins=["core_nodes", "models"])

    def prompt(config: str, prefix: str) -> dict[str, Any]:
        return {
            "1": {"class_type": "CheckpointLoader", "inputs": {"config_name": config, "ckpt_name": "tiny.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a quiet harbour"}},
            "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "4": {"class_type": "KSampler",
                  "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
                             "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                             "denoise": 1.0}},
            "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": prefix}},
        }  # fmt: skip

    async def latent(config: str, prefix: str) -> torch.Tensor:
        frames = await run_prompt(server, prompt(config, prefix))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
        return load_file(str(tmp_path / "output" / saved["filename"]))["latent_tensor"]

    from plugins.core_nodes.ksampler import run_ksampler
    from plugins.core_nodes.sampling.prediction import make_sampling

    model, clip, _ = adapters.load_checkpoint(models / "checkpoints" / "tiny.safetensors")
    plain_cond = clip.encode("a quiet harbour")[0]
    skipped = clip.clone()
    skipped.clip_layer(-2)
    cond = skipped.encode_from_tokens(skipped.tokenize("a quiet harbour"))
    v_model = model.clone()
    v_model.add_object_patch("model_sampling", make_sampling("v_prediction"))
    start_latent = {"samples": torch.zeros(1, 4, 8, 8)}
    expected_v = run_ksampler(v_model, 1, 2, 1.0, "euler", "simple", [[cond, {}]], [[cond, {}]], start_latent)["samples"]
    expected_eps = run_ksampler(model, 1, 2, 1.0, "euler", "simple", [[plain_cond, {}]], [[plain_cond, {}]], start_latent)["samples"]
    assert (expected_v - expected_eps).abs().max() > 1e-3
    assert torch.allclose(await latent("v.yaml", "v"), expected_v, atol=1e-5)
    assert torch.allclose(await latent("eps.yaml", "eps"), expected_eps, atol=1e-5)
    frames = await run_prompt(server, prompt("bad.yaml", "bad"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "CheckpointLoader" and "not a latent-diffusion model config" in error["exception_message"]


# --- DiffusersLoader -----------------------------------------------------------------------------


def _clip_config() -> Any:
    from transformers import CLIPTextConfig

    c = tiny_pipeline.CLIP_L
    return CLIPTextConfig(vocab_size=49408, hidden_size=c.width, intermediate_size=c.mlp_width, num_hidden_layers=c.layers,
                          num_attention_heads=c.heads, max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.ndim > 1 or not name.endswith("weight") else 0.1))
    return module.eval()


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny SD1 pipeline folder as diffusers / transformers write it, and those models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = tmp_path_factory.mktemp("diffusers")
    folder = root / "tiny-sd"
    config = {**tiny_sd.diffusers_unet_config("sd1"), "cross_attention_dim": tiny_pipeline.CLIP_WIDTH}
    unet = _randomize(UNet2DConditionModel(**config), 1)
    vae = _randomize(AutoencoderKL(**tiny_sd.diffusers_vae_config()), 2)
    text = _randomize(CLIPTextModel(_clip_config()), 3)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {"root": root, "folder": folder, "unet": unet, "vae": vae, "text": text}


def test_diffusers_folder_gives_diffusers_numbers(diffusers_folder: dict[str, Any]) -> None:
    model, clip, vae = load_diffusers(diffusers_folder["folder"])
    assert model.family.name == "sd1" and model.family.prediction == "eps"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 5, tiny_pipeline.CLIP_WIDTH, generator=g)
    t = torch.tensor([999.0, 250.0])
    with torch.no_grad():
        ours = model.unet(x, t, context)
        theirs = diffusers_folder["unet"](x, t, encoder_hidden_states=context).sample
        assert torch.allclose(ours, theirs, atol=1e-5), f"{(ours - theirs).abs().max():.2e}"
        latent = torch.randn(1, 4, 4, 4, generator=g)
        image = vae.decode(latent)
        expected = (diffusers_folder["vae"].decode(latent).sample.clamp(-1, 1) + 1) / 2
        assert torch.allclose(image, expected.movedim(1, -1), atol=1e-5)
        tokens = clip.tokenize("a lighthouse")
        cond = clip.encode_from_tokens(tokens)
        ids = torch.tensor([[t[0] for t in tokens["l"][0]]])
        hidden = diffusers_folder["text"](ids).last_hidden_state
        assert torch.allclose(cond, hidden, atol=1e-5), f"{(cond - hidden).abs().max():.2e}"


def test_v_prediction_scheduler_and_unknown_keys(diffusers_folder: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "v-model"
    shutil.copytree(diffusers_folder["folder"], folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    model, _, _ = load_diffusers(folder)
    assert model.family.prediction == "v"
    with pytest.raises(DiffusersError, match="unknown UNet weight"):
        unet_to_single_file({"conv_in.weight": torch.zeros(1), "mystery.weight": torch.zeros(1)})
    shutil.rmtree(folder / "unet")
    with pytest.raises(DiffusersError, match="no unet"):
        load_diffusers(folder)


def test_sdxl_unet_converts(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = _randomize(UNet2DConditionModel(**tiny_sd.diffusers_unet_config("sdxl")), 4)
    sd = unet_to_single_file(unet.state_dict())
    assert set(sd) == set(tiny_sd.unet_weights("sdxl"))


async def test_diffusers_loader_through_the_server(comfy_server: Any, tmp_path: Path, diffusers_folder: dict[str, Any]) -> None:
    import shutil

    shutil.copytree(diffusers_folder["folder"], tmp_path / "models" / "diffusers" / "sd" / "tiny")
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info/DiffusersLoader")
    assert status == 200 and info["DiffusersLoader"]["input"]["required"]["model_path"][0] == ["sd/tiny"]
    prompt = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "sd/tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a lighthouse"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "4": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
                         "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }  # fmt: skip
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (image,) = messages(frames, "executed")[-1]["output"]["images"]
    assert image["type"] == "temp"
    prompt["1"]["inputs"]["model_path"] = "../elsewhere"
    status, _ = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400  # not one of the listed folders


# --- unCLIPCheckpointLoader ----------------------------------------------------------------------


async def test_unclip_loader_returns_the_checkpoints_vision_tower(comfy_server: Any, tmp_path: Path) -> None:
    vision = _reference_model()
    hf = {k: v.contiguous() for k, v in vision.state_dict().items()}
    visual = {"embedder.model." + k: v.contiguous() for k, v in _to_openclip(hf).items()}
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    save_file({**tiny_pipeline.checkpoint_dict("sd1"), **visual}, str(models / "with_vision.safetensors"))
    tiny_pipeline.write_checkpoint(models / "plain.safetensors", "sd1")
    (tmp_path / "input").mkdir()
    Image.fromarray((np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)).save(tmp_path / "input" / "i.png")
    server = await comfy_server(plugins=["core_nodes", "models"])

    def prompt(name: str) -> dict[str, Any]:
        return {
            "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": name}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "i.png"}},
            "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["2", 0], "crop": "none"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
            "5": {"class_type": "unCLIPConditioning",
                  "inputs": {"conditioning": ["4", 0], "clip_vision_output": ["3", 0], "strength": 1.0,
                             "noise_augmentation": 0.0}},
            "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        }  # fmt: skip

    frames = await run_prompt(server, prompt("with_vision.safetensors"))
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    # The tower is the one the transformers-layout file gives.
    tower = clip_vision_from_checkpoint(models / "with_vision.safetensors")
    image = torch.rand(1, 16, 16, 3)
    assert tower is not None
    assert torch.allclose(tower.encode_image(image).image_embeds, load_clip_vision(hf).encode_image(image).image_embeds, atol=1e-6)
    assert clip_vision_from_checkpoint(models / "plain.safetensors") is None
    frames = await run_prompt(server, prompt("plain.safetensors"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "CLIPVisionEncode"  # no tower: the reference's None reaches the encoder
