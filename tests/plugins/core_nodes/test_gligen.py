"""GLIGEN: the position net and gated attention against diffusers', the whole UNet with GLIGEN
against diffusers' gated ``UNet2DConditionModel``, the sampler hook, and the nodes through the
real server.

The reference is diffusers (``GLIGENTextBoundingboxProjection``, ``GatedSelfAttentionDense`` and
``UNet2DConditionModel(attention_type="gated")``) holding the same tiny random weights as our
single-file GLIGEN layout; every gate is given a non-zero value so each block shows in the output.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.gligen import (
    MAX_OBJECTS,
    GatedSelfAttention,
    GLIGENError,
    PositionNet,
    load_gligen,
    load_gligen_file,
)
from plugins.core_nodes.models.unet import UNetModel
from plugins.core_nodes.nodes.gligen import GLIGENTextBoxApply

from . import tiny_pipeline, tiny_sd
from .node_helpers import messages, run_prompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5
KEY_DIM = 768  # SD1 GLIGEN's grounding-token width (8 heads per block)
# The tiny UNet's transformers in order, and the diffusers modules that hold the same ones.
LDM_TRANSFORMERS = ("input_blocks.1.1", "input_blocks.2.1", "middle_block.1", "output_blocks.3.1",
                    "output_blocks.4.1", "output_blocks.5.1")  # fmt: skip
DIFFUSERS_TRANSFORMERS = ("down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "mid_block.attentions.0",
                          "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2")  # fmt: skip


def _randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("alpha") or ".alpha" in name:
                p.copy_(0.5 + torch.rand(()))  # tanh(gate) well away from 0
            elif "null_" in name:
                p.copy_(torch.randn_like(p))
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return module.eval()


def _boxes(batch: int, used: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, MAX_OBJECTS, 2, generator=g) * 0.5
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(batch, MAX_OBJECTS, 2, generator=g) * 0.4], dim=-1)
    masks = torch.zeros(batch, MAX_OBJECTS)
    masks[:, :used] = 1
    boxes = boxes * masks.unsqueeze(-1)
    return boxes, masks, torch.randn(batch, MAX_OBJECTS, KEY_DIM, generator=g) * masks.unsqueeze(-1)


def test_position_net_matches_diffusers() -> None:
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    reference = _randomized(GLIGENTextBoundingboxProjection(positive_len=KEY_DIM, out_dim=KEY_DIM), 1)
    ours = PositionNet(KEY_DIM, KEY_DIM)
    ours.load_state_dict(reference.state_dict(), strict=True)
    boxes, masks, embeddings = _boxes(2, used=3)
    with torch.no_grad():
        expected = reference(boxes=boxes, masks=masks, positive_embeddings=embeddings)
        got = ours(boxes, masks, embeddings)
    assert got.shape == (2, MAX_OBJECTS, KEY_DIM)
    assert torch.allclose(got, expected, atol=ATOL), f"{(got - expected).abs().max():.2e}"


def test_gated_self_attention_matches_diffusers() -> None:
    from diffusers.models.attention import GatedSelfAttentionDense

    reference = _randomized(GatedSelfAttentionDense(32, KEY_DIM, n_heads=8, d_head=4), 2)
    ours = GatedSelfAttention(32, KEY_DIM, heads=8, head_dim=4)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 64, 32)
    objs = torch.randn(2, MAX_OBJECTS, KEY_DIM)
    with torch.no_grad():
        expected, got = reference(x, objs), ours(x, objs)
    assert (got - x).abs().max() > 0.1  # the gates are open
    assert torch.allclose(got, expected, atol=ATOL), f"{(got - expected).abs().max():.2e}"


@pytest.fixture(scope="module")
def gated_unet() -> dict[str, Any]:
    """Our tiny SD1 UNet (768-wide context, as GLIGEN's SD1 files expect) and diffusers' gated UNet
    with the same weights; the GLIGEN weights in our single-file layout."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = replace(tiny_sd.UNET_CONFIGS["sd1"], context_dim=KEY_DIM)
    torch.manual_seed(0)
    ours = UNetModel(config)
    ours.load_state_dict(tiny_sd._randomize(ours, 0))
    dconfig = {**tiny_sd.diffusers_config(config), "attention_type": "gated"}
    reference = UNet2DConditionModel(**dconfig)
    ldm = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    missing, unexpected = reference.load_state_dict(convert_ldm_unet_checkpoint(ldm, dconfig), strict=False)
    assert not unexpected and all(".fuser." in k or k.startswith("position_net.") for k in missing)
    _randomized(reference.position_net, 3)
    gligen_sd = {f"position_net.{k}": v.clone() for k, v in reference.position_net.state_dict().items()}
    for i, (ldm_name, name) in enumerate(zip(LDM_TRANSFORMERS, DIFFUSERS_TRANSFORMERS, strict=True)):
        fuser = _randomized(reference.get_submodule(f"{name}.transformer_blocks.0.fuser"), 10 + i)
        for k, v in fuser.state_dict().items():
            gligen_sd[f"{ldm_name}.transformer_blocks.0.fuser.{k}"] = v.clone()
    return {"ours": ours.eval(), "reference": reference.eval(), "gligen_sd": gligen_sd}


def test_unet_with_gligen_matches_diffusers(gated_unet: dict[str, Any]) -> None:
    """Two boxes given as the text-box node gives them (latent pixels), on an 8x12 latent: our
    UNet with the GLIGEN ``middle_patch`` equals diffusers' gated UNet fed the normalised boxes."""
    gligen = load_gligen(gated_unet["gligen_sd"])
    assert len(gligen.module_list) == len(LDM_TRANSFORMERS)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 12, generator=g)
    context = torch.randn(2, 5, KEY_DIM, generator=g)
    t = torch.tensor([500.0, 120.0])
    phrases = [torch.randn(1, KEY_DIM, generator=g) for _ in range(2)]
    params = [(phrases[0], 4, 6, 2, 3), (phrases[1], 8, 4, 0, 8)]  # (pooled, h, w, y, x)
    patch = gligen.set_position(x.shape, params, "cpu")
    with torch.no_grad():
        got = gated_unet["ours"](x, t, context, transformer_options={"patches": {"middle_patch": [patch]}})
        plain = gated_unet["ours"](x, t, context)
        boxes = torch.zeros(2, MAX_OBJECTS, 4)
        masks = torch.zeros(2, MAX_OBJECTS)
        embeddings = torch.zeros(2, MAX_OBJECTS, KEY_DIM)
        for i, (pooled, h, w, y, x0) in enumerate(params):
            boxes[:, i] = torch.tensor([x0 / 12, y / 8, (x0 + w) / 12, (y + h) / 8])
            masks[:, i] = 1
            embeddings[:, i] = pooled[0]
        grounding = {"boxes": boxes, "masks": masks, "positive_embeddings": embeddings}
        expected = gated_unet["reference"](x, t, context, cross_attention_kwargs={"gligen": grounding}).sample
    assert (got - plain).abs().max() > 1e-2  # the boxes changed the prediction...
    assert torch.allclose(got, expected, atol=1e-4), f"{(got - expected).abs().max():.2e}"  # ...as diffusers'


def adapters_free_patcher(gligen: Any) -> Any:
    """The GLIGEN value as GLIGENLoader hands it out (the reference's patcher, ``.model``)."""
    from plugins.core_nodes.models.patcher import ModelPatcher

    return ModelPatcher(gligen, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_sampling_applies_the_boxes_to_cond_and_uncond(gated_unet: dict[str, Any], tmp_path: Path) -> None:
    """KSampler with the boxes on the positive prompt (no areas) equals KSampler with the GLIGEN
    patch on every model call: as in the reference, the negative prompt takes the positive's
    boxes when both cover the whole latent."""
    path = tmp_path / "sd1.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in gated_unet["ours"].state_dict().items()}, str(path))
    model, _, _ = adapters.load_checkpoint(path)
    save_file(gated_unet["gligen_sd"], str(tmp_path / "g.safetensors"))
    gligen = load_gligen_file(tmp_path / "g.safetensors")
    g = torch.Generator().manual_seed(9)
    cond, uncond = torch.randn(1, 5, KEY_DIM, generator=g), torch.randn(1, 5, KEY_DIM, generator=g)
    boxes = [(torch.randn(1, KEY_DIM, generator=g), 4, 4, 2, 6)]
    latent = {"samples": torch.zeros(1, 4, 8, 12)}
    positive = [[cond, {"gligen": ("position", gligen, boxes)}]]
    with torch.no_grad():
        grounded = run_ksampler(model, 5, 3, 4.0, "euler", "simple", positive, [[uncond, {}]], latent)["samples"]
        patched = model.clone()
        patched.set_model_patch(gligen.model.set_position((1, 4, 8, 12), boxes, "cpu"), "middle_patch")
        expected = run_ksampler(patched, 5, 3, 4.0, "euler", "simple", [[cond, {}]], [[uncond, {}]], latent)["samples"]
        plain = run_ksampler(model, 5, 3, 4.0, "euler", "simple", [[cond, {}]], [[uncond, {}]], latent)["samples"]
    assert "patches" not in model.model_options["transformer_options"]  # the MODEL is left as it was
    assert (grounded - plain).abs().max() > 1e-3
    # Relative: the expected run batches cond and uncond into one call, the grounded one cannot
    # (each entry has its own patch), and the tiny random model's latents reach the hundreds.
    error = (grounded - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, f"{error:.2e}"


def test_text_box_node_accumulates_boxes_in_latent_pixels() -> None:
    class Clip:
        def tokenize(self, text: str) -> str:
            return text

        def encode_from_tokens(self, tokens: str, return_pooled: Any = False) -> tuple[torch.Tensor, torch.Tensor]:
            assert return_pooled == "unprojected"
            return torch.zeros(1, 77, 8), torch.full((1, 8), float(len(tokens)))

    gligen = object()
    cond = [[torch.ones(1, 77, 8), {"strength": 0.5}]]
    (once,) = GLIGENTextBoxApply().append(cond, Clip(), gligen, "a cat", 100, 64, 16, 40)
    (twice,) = GLIGENTextBoxApply().append(once, Clip(), gligen, "dog", 64, 72, 0, 8)
    assert cond[0][1] == {"strength": 0.5}  # the input is not changed
    kind, model, boxes = twice[0][1]["gligen"]
    assert kind == "position" and model is gligen and twice[0][1]["strength"] == 0.5
    assert [b[1:] for b in boxes] == [(8, 12, 5, 2), (9, 8, 1, 0)]  # (h, w, y, x) // 8
    assert [float(b[0][0, 0]) for b in boxes] == [5.0, 3.0]
    assert len(once[0][1]["gligen"][2]) == 1


def test_bad_gligen_inputs_are_refused_clearly(gated_unet: dict[str, Any]) -> None:
    with pytest.raises(GLIGENError, match="not a GLIGEN model"):
        load_gligen({"input_blocks.0.0.weight": torch.zeros(1)})
    gligen = load_gligen(gated_unet["gligen_sd"])
    with pytest.raises(GLIGENError, match="at most 30"):
        gligen.set_position((1, 4, 8, 8), [(torch.zeros(1, KEY_DIM), 1, 1, 0, 0)] * 31, "cpu")
    with pytest.raises(GLIGENError, match="768"):
        gligen.set_position((1, 4, 8, 8), [(torch.zeros(1, 64), 1, 1, 0, 0)], "cpu")


# --- through the server --------------------------------------------------------------------------

GLIGEN_IN = tiny_pipeline.CLIP_WIDTH  # the tiny CLIP's pooled width feeds the position net


def _tiny_gligen_sd() -> dict[str, torch.Tensor]:
    """A GLIGEN file for the tiny pipeline checkpoint: its six transformers, 64-wide phrases."""
    torch.manual_seed(21)
    net = _randomized(PositionNet(GLIGEN_IN, KEY_DIM, hidden=64), 21)
    sd = {f"position_net.{k}": v for k, v in net.state_dict().items()}
    widths = {"input_blocks": 32, "middle_block": 64, "output_blocks": 32}
    for i, name in enumerate(LDM_TRANSFORMERS):
        dim = widths[name.split(".")[0]]
        block = _randomized(GatedSelfAttention(dim, KEY_DIM, 8, dim // 8), 30 + i)
        sd.update({f"{name}.transformer_blocks.0.fuser.{k}": v for k, v in block.state_dict().items()})
    return sd


@pytest.fixture
async def server_files(comfy_server: Any, tmp_path: Path) -> Any:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    (models / "gligen").mkdir(parents=True)
    save_file(_tiny_gligen_sd(), str(models / "gligen" / "tiny_gligen.safetensors"))
    save_file({"something": torch.zeros(2)}, str(models / "gligen" / "broken.safetensors"))
    server = await comfy_server(plugins=["core_nodes", "models"])
    return server, tmp_path


def _prompt(gligen: str | None, prefix: str) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a garden"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": prefix}},
    }
    pos = ["2", 0]
    if gligen is not None:
        prompt["5"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": gligen}}
        prompt["6"] = {
            "class_type": "GLIGENTextBoxApply",
            "inputs": {"conditioning_to": pos, "clip": ["1", 1], "gligen_textbox_model": ["5", 0],
                       "text": "a red ball", "width": 40, "height": 32, "x": 16, "y": 8},
        }  # fmt: skip
        pos = ["6", 0]
    prompt["8"] = {
        "class_type": "KSampler",
        "inputs": {"model": ["1", 0], "positive": pos, "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
                   "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
    }  # fmt: skip
    return prompt


async def _run(server: Any, prompt: dict[str, Any]) -> list[Any]:
    return await run_prompt(server, prompt)


async def test_text_box_prompt_matches_the_direct_computation(server_files: Any) -> None:
    server, root = server_files
    frames = await _run(server, _prompt("tiny_gligen.safetensors", "gligen"))
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
    served = load_file(str(root / "output" / saved["filename"]))["latent_tensor"]

    model, clip, _ = adapters.load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    gligen = adapters_free_patcher(load_gligen(_tiny_gligen_sd()))
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a garden"), return_pooled=True)
    _, phrase = clip.encode_from_tokens(clip.tokenize("a red ball"), return_pooled="unprojected")
    positive = [[cond, {"pooled_output": pooled, "gligen": ("position", gligen, [(phrase, 4, 5, 1, 2)])}]]
    negative = [[clip.encode_from_tokens(clip.tokenize("blurry")), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 12)}
    direct = run_ksampler(model, 3, 3, 4.0, "euler", "simple", positive, negative, latent)["samples"]
    plain = run_ksampler(model, 3, 3, 4.0, "euler", "simple", [[cond, {}]], negative, latent)["samples"]
    assert (direct - plain).abs().max() > 1e-3
    assert torch.allclose(served, direct, atol=1e-5), f"{(served - direct).abs().max():.2e}"


async def test_gligen_files_are_listed_and_a_bad_one_fails_the_prompt_clearly(server_files: Any) -> None:
    server, _ = server_files
    status, info = await server.json("GET", "/object_info/GLIGENLoader")
    assert status == 200
    names = info["GLIGENLoader"]["input"]["required"]["gligen_name"][0]
    assert sorted(names) == ["broken.safetensors", "tiny_gligen.safetensors"]
    frames = await _run(server, _prompt("broken.safetensors", "broken"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "GLIGENLoader"
    assert "not a GLIGEN model" in error["exception_message"]
