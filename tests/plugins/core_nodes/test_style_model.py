"""Style models: the T2I style adapter against an independent computation (transformers' CLIP
encoder layers holding the same weights), Redux by formula, StyleModelApply's tokens and
attention bias by hand, and CLIPVisionEncode + StyleModelApply + KSampler through the server.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.clip_vision import load_clip_vision
from plugins.core_nodes.models.style_model import (
    StyleModel,
    StyleModelError,
    build_style_model,
    load_style_model,
)
from plugins.core_nodes.nodes.style_model import StyleModelApply

from . import tiny_pipeline
from .node_helpers import messages, run_prompt
from .test_clip_vision_nodes import IMAGE_SIZE, _reference_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, CONTEXT, LAYERS, TOKENS = 32, tiny_pipeline.CLIP_WIDTH, 2, 3


def style_adapter_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    """A T2I style adapter in the reference's file layout, random weights."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "style_embedding": rand(1, TOKENS, WIDTH, scale=1.0),
        "proj": rand(WIDTH, CONTEXT),
        "ln_pre.weight": 1 + rand(WIDTH), "ln_pre.bias": rand(WIDTH),
        "ln_post.weight": 1 + rand(WIDTH), "ln_post.bias": rand(WIDTH),
    }  # fmt: skip
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        sd.update({
            p + "attn.in_proj_weight": rand(3 * WIDTH, WIDTH), p + "attn.in_proj_bias": rand(3 * WIDTH),
            p + "attn.out_proj.weight": rand(WIDTH, WIDTH), p + "attn.out_proj.bias": rand(WIDTH),
            p + "ln_1.weight": 1 + rand(WIDTH), p + "ln_1.bias": rand(WIDTH),
            p + "ln_2.weight": 1 + rand(WIDTH), p + "ln_2.bias": rand(WIDTH),
            p + "mlp.c_fc.weight": rand(4 * WIDTH, WIDTH), p + "mlp.c_fc.bias": rand(4 * WIDTH),
            p + "mlp.c_proj.weight": rand(WIDTH, 4 * WIDTH), p + "mlp.c_proj.bias": rand(WIDTH),
        })  # fmt: skip
    return sd


def _reference_style(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The style adapter written with transformers' CLIP encoder layers (pre-norm attention and
    QuickGELU MLP), the q/k/v split out of the fused projection."""
    from transformers import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    config = CLIPTextConfig(hidden_size=WIDTH, num_attention_heads=8, intermediate_size=4 * WIDTH,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)  # fmt: skip
    config._attn_implementation = "eager"
    h = torch.cat([x, sd["style_embedding"].expand(x.shape[0], -1, -1)], dim=1)
    h = F.layer_norm(h, (WIDTH,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        q, k, v = sd[p + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[p + "attn.in_proj_bias"].chunk(3)
        layer = CLIPEncoderLayer(config).eval()
        layer.load_state_dict({
            "self_attn.q_proj.weight": q, "self_attn.q_proj.bias": qb,
            "self_attn.k_proj.weight": k, "self_attn.k_proj.bias": kb,
            "self_attn.v_proj.weight": v, "self_attn.v_proj.bias": vb,
            "self_attn.out_proj.weight": sd[p + "attn.out_proj.weight"],
            "self_attn.out_proj.bias": sd[p + "attn.out_proj.bias"],
            "layer_norm1.weight": sd[p + "ln_1.weight"], "layer_norm1.bias": sd[p + "ln_1.bias"],
            "layer_norm2.weight": sd[p + "ln_2.weight"], "layer_norm2.bias": sd[p + "ln_2.bias"],
            "mlp.fc1.weight": sd[p + "mlp.c_fc.weight"], "mlp.fc1.bias": sd[p + "mlp.c_fc.bias"],
            "mlp.fc2.weight": sd[p + "mlp.c_proj.weight"], "mlp.fc2.bias": sd[p + "mlp.c_proj.bias"],
        })  # fmt: skip
        out = layer(h, None)
        h = out[0] if isinstance(out, tuple) else out
    h = F.layer_norm(h[:, -TOKENS:], (WIDTH,), sd["ln_post.weight"], sd["ln_post.bias"])
    return h @ sd["proj"]


def test_style_adapter_matches_an_independent_computation() -> None:
    sd = style_adapter_sd()
    model = build_style_model(sd)
    x = torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x)
        expected = _reference_style(sd, x)
    assert got.shape == (2, TOKENS, CONTEXT)
    assert torch.allclose(got, expected, atol=1e-5), f"{(got - expected).abs().max():.2e}"


def test_redux_is_down_of_silu_of_up() -> None:
    g = torch.Generator().manual_seed(2)
    sd = {
        "redux_up.weight": torch.randn(24, 16, generator=g), "redux_up.bias": torch.randn(24, generator=g),
        "redux_down.weight": torch.randn(8, 24, generator=g), "redux_down.bias": torch.randn(8, generator=g),
    }  # fmt: skip
    x = torch.randn(1, 4, 16, generator=g)
    hidden = x @ sd["redux_up.weight"].T + sd["redux_up.bias"]
    expected = (hidden * torch.sigmoid(hidden)) @ sd["redux_down.weight"].T + sd["redux_down.bias"]
    with torch.no_grad():
        assert torch.allclose(build_style_model(sd)(x), expected, atol=1e-5)


def test_files_that_are_no_style_model_are_refused_clearly() -> None:
    with pytest.raises(StyleModelError, match="not a style model"):
        build_style_model({"weight": torch.zeros(2)})
    bad = style_adapter_sd()
    bad["proj"] = torch.zeros(WIDTH + 1, CONTEXT)
    with pytest.raises(StyleModelError, match="do not fit"):
        build_style_model(bad)


class _Fixed:
    """A style model whose tokens are given: StyleModelApply's own arithmetic is what is tested."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def get_cond(self, output: Any) -> torch.Tensor:
        return self.tokens.clone()


def test_multiply_scales_and_appends_every_images_tokens() -> None:
    tokens = torch.randn(2, 3, 4)  # two images, three tokens each
    text = torch.randn(1, 5, 4)
    cond = [[text, {"pooled_output": torch.ones(1, 4)}]]
    (out,) = StyleModelApply().apply_stylemodel(cond, _Fixed(tokens), None, 0.5, "multiply")
    (styled, options) = out[0]
    assert torch.equal(styled, torch.cat([text, tokens.reshape(1, 6, 4) * 0.5], dim=1))
    assert "attention_mask" not in options and torch.equal(options["pooled_output"], torch.ones(1, 4))
    assert cond[0][0] is text and cond[0][1].keys() == {"pooled_output"}  # the input is unchanged


def test_attn_bias_grows_the_attention_mask() -> None:
    tokens = torch.randn(1, 2, 4)
    text = torch.randn(1, 3, 4)
    (out,) = StyleModelApply().apply_stylemodel([[text, {}]], _Fixed(tokens), None, 0.25, "attn_bias")
    styled, options = out[0]
    assert torch.equal(styled, torch.cat([text, tokens], dim=1))  # not scaled
    mask = options["attention_mask"]
    expected = torch.zeros(1, 6, 6, dtype=torch.float16)  # 3 text + 2 style + 1 reference slot
    expected[:, :3, 3:5] = math.log(0.25)
    expected[:, 5:, 3:5] = math.log(0.25)
    assert mask.dtype == torch.float16 and torch.equal(mask, expected)
    assert options["attention_mask_img_shape"] == (1, 1)
    # strength 1 with no mask leaves none; an existing boolean mask grows at bias 0 (log True).
    (plain,) = StyleModelApply().apply_stylemodel([[text, {}]], _Fixed(tokens), None, 1.0, "attn_bias")
    assert "attention_mask" not in plain[0][1]
    old = torch.ones(1, 4, 4, dtype=torch.bool)
    old[0, 0, 3] = False
    (grown,) = StyleModelApply().apply_stylemodel([[text, {"attention_mask": old}]], _Fixed(tokens), None, 2.0, "multiply")
    mask = grown[0][1]["attention_mask"]
    assert mask.shape == (1, 6, 6) and mask[0, 0, 5] == -math.inf and mask[0, 0, 3] == 0
    assert int(torch.isinf(mask).sum()) == 1


# --- through the server --------------------------------------------------------------------------


@pytest.fixture
async def server_files(comfy_server: Any, tmp_path: Path) -> Any:
    models = tmp_path / "models"
    tiny_pipeline.write_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1")
    (models / "style_models").mkdir(parents=True)
    save_file(style_adapter_sd(), str(models / "style_models" / "tiny_style.safetensors"))
    save_file({"x": torch.zeros(1)}, str(models / "style_models" / "broken.safetensors"))
    (models / "clip_vision").mkdir()
    vision = _reference_model()
    save_file({k: v.contiguous() for k, v in vision.state_dict().items()}, str(models / "clip_vision" / "cv.safetensors"))
    (tmp_path / "input").mkdir()
    from PIL import Image

    Image.new("RGB", (24, 20), (200, 40, 90)).save(tmp_path / "input" / "style.png")
    server = await comfy_server(plugins=["core_nodes", "models"])
    return server, tmp_path


def _prompt(style: str, strength: float, strength_type: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a bowl of fruit"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style}},
        "6": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "cv.safetensors"}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "8": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["6", 0], "image": ["7", 0], "crop": "center"}},
        "9": {"class_type": "StyleModelApply",
              "inputs": {"conditioning": ["2", 0], "style_model": ["5", 0], "clip_vision_output": ["8", 0],
                         "strength": strength, "strength_type": strength_type}},
        "10": {"class_type": "KSampler",
               "inputs": {"model": ["1", 0], "positive": ["9", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                          "seed": 2, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                          "denoise": 1.0}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "style"}},
    }  # fmt: skip


async def test_style_prompt_matches_the_direct_computation(server_files: Any) -> None:
    server, root = server_files
    frames = await run_prompt(server, _prompt("tiny_style.safetensors", 0.7, "multiply"))
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    (saved,) = messages(frames, "executed")[-1]["output"]["latents"]
    served = load_file(str(root / "output" / saved["filename"]))["latent_tensor"]

    model, clip, _ = adapters.load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")
    vision = load_clip_vision(load_file(str(root / "models" / "clip_vision" / "cv.safetensors")))
    image = torch.zeros(1, 20, 24, 3)
    image[..., 0], image[..., 1], image[..., 2] = 200 / 255, 40 / 255, 90 / 255
    seen = vision.encode_image(image, crop=True)
    with torch.no_grad():
        tokens = _reference_style(style_adapter_sd(), seen.last_hidden_state) * 0.7
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a bowl of fruit"), return_pooled=True)
    positive = [[torch.cat([cond, tokens], dim=1), {"pooled_output": pooled}]]
    negative = [[clip.encode_from_tokens(clip.tokenize("blurry")), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    direct = run_ksampler(model, 2, 3, 3.0, "euler", "simple", positive, negative, latent)["samples"]
    assert IMAGE_SIZE == 16 and tokens.shape == (1, TOKENS, CONTEXT)
    assert torch.allclose(served, direct, atol=1e-4), f"{(served - direct).abs().max():.2e}"


async def test_a_file_that_is_no_style_model_fails_the_prompt_clearly(server_files: Any) -> None:
    server, _ = server_files
    frames = await run_prompt(server, _prompt("broken.safetensors", 1.0, "multiply"))
    (error,) = messages(frames, "execution_error")
    assert error["node_type"] == "StyleModelLoader"
    assert "not a style model" in error["exception_message"]


def test_loaded_file_gives_the_style_model_value(tmp_path: Path) -> None:
    save_file(style_adapter_sd(), str(tmp_path / "s.safetensors"))
    loaded = load_style_model(tmp_path / "s.safetensors")
    assert isinstance(loaded, StyleModel)
    x = torch.randn(1, 5, WIDTH)
    out = loaded.get_cond(SimpleNamespace(last_hidden_state=x))
    assert out.dtype == torch.float32
    assert torch.allclose(out, _reference_style(style_adapter_sd(), x), atol=1e-5)
