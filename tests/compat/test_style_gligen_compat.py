"""``comfy.sd.load_style_model`` / ``comfy.sd.load_gligen`` and the ``comfy.gligen`` module, called
the way packs call them, on tiny random-weight files in the reference's layouts.

The style model's tokens are checked against the adapter written with transformers' CLIP encoder
layers (the core style-model test's independent computation); the GLIGEN network against the
grounding tokens and gated block written out from the reference's formulas.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from plugins.core_nodes.models.gligen import GLIGENError
from plugins.core_nodes.models.style_model import StyleModel as CoreStyleModel
from plugins.core_nodes.models.style_model import StyleModelError
from tests.plugins.core_nodes.test_gligen import KEY_DIM, _tiny_gligen_sd
from tests.plugins.core_nodes.test_style_model import (
    CONTEXT,
    TOKENS,
    WIDTH,
    _reference_style,
    style_adapter_sd,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def shims(comfy_server: Any) -> Any:
    return await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], cpu=True)


def _mod(name: str) -> Any:
    return importlib.import_module(name)


def _vision_output(seed: int = 1) -> Any:
    hidden = torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(seed))
    return SimpleNamespace(last_hidden_state=hidden)


# --- style models ------------------------------------------------------------------------------------


async def test_load_style_model_gives_the_loader_nodes_value(shims: Any, tmp_path: Path) -> None:
    sd_module = _mod("comfy.sd")
    weights = style_adapter_sd(seed=3)
    save_file(weights, str(tmp_path / "style.safetensors"))
    style = sd_module.load_style_model(str(tmp_path / "style.safetensors"))
    assert isinstance(style, CoreStyleModel) and isinstance(style, sd_module.StyleModel)
    out = _vision_output()
    with torch.no_grad():
        expected = _reference_style(weights, out.last_hidden_state)
    tokens = style.get_cond(out)
    assert tokens.shape == (2, TOKENS, CONTEXT)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)

    # The value goes into the core StyleModelApply as a pack hands it over.
    apply = _mod("nodes").NODE_CLASS_MAPPINGS["StyleModelApply"]()
    text = torch.randn(1, 4, CONTEXT, generator=torch.Generator().manual_seed(2))
    (conditioning,) = apply.apply_stylemodel([[text, {}]], style, out, 0.5, "multiply")
    torch.testing.assert_close(conditioning[0][0], torch.cat([text, expected.flatten(0, 1)[None] * 0.5], dim=1))

    save_file({"not_a_style_model": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StyleModelError, match=r"other\.safetensors is not a style model"):
        sd_module.load_style_model(str(tmp_path / "other.safetensors"))
    with pytest.raises(FileNotFoundError, match="load_style_model"):
        sd_module.load_style_model(str(tmp_path / "missing.safetensors"))


async def test_a_packs_own_style_model_object(shims: Any) -> None:
    sd_module = _mod("comfy.sd")
    out = _vision_output()
    # A network of the pack's own: run on the compute device like the loader's.
    layer = torch.nn.Linear(WIDTH, 3)
    own = sd_module.StyleModel(layer)
    assert isinstance(own, sd_module.StyleModel) and not isinstance(object(), sd_module.StyleModel)
    with torch.no_grad():
        torch.testing.assert_close(own.get_cond(out), layer(out.last_hidden_state))
    # Any other callable is called on the tokens as they are.
    assert torch.equal(sd_module.StyleModel(lambda h: h * 2).get_cond(out), out.last_hidden_state * 2)


# --- GLIGEN ---------------------------------------------------------------------------------------------


def _fourier_reference(x: torch.Tensor, freqs: int, temperature: float = 100.0) -> torch.Tensor:
    parts = []
    for k in range(freqs):
        band = temperature ** (k / freqs)
        parts += [torch.sin(band * x), torch.cos(band * x)]
    return torch.cat(parts, dim=-1)


def _grounding_reference(sd: dict[str, torch.Tensor], boxes: torch.Tensor, masks: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """The position net written out: Fourier features of the boxes, null features on empty
    slots, three linear layers with SiLU between."""
    p = "position_net."
    freqs = sd[p + "null_position_feature"].shape[0] // 8
    used = masks[..., None]
    position = _fourier_reference(boxes, freqs)
    phrases = phrases * used + (1 - used) * sd[p + "null_positive_feature"]
    position = position * used + (1 - used) * sd[p + "null_position_feature"]
    h = torch.cat([phrases, position], dim=-1)
    h = F.silu(F.linear(h, sd[p + "linears.0.weight"], sd[p + "linears.0.bias"]))
    h = F.silu(F.linear(h, sd[p + "linears.2.weight"], sd[p + "linears.2.bias"]))
    return F.linear(h, sd[p + "linears.4.weight"], sd[p + "linears.4.bias"])


def _gated_reference(w: dict[str, torch.Tensor], x: torch.Tensor, objs: torch.Tensor, heads: int) -> torch.Tensor:
    """The gated self-attention block written out: attention over visual + projected grounding
    tokens (visual part kept), then a GEGLU feed-forward, each through tanh of its gate."""
    visual, dim = x.shape[1], x.shape[2]
    tokens = torch.cat([x, F.linear(objs, w["linear.weight"], w["linear.bias"])], dim=1)
    h = F.layer_norm(tokens, (dim,), w["norm1.weight"], w["norm1.bias"])
    q, k, v = (F.linear(h, w[f"attn.to_{n}.weight"]) for n in "qkv")
    split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    att = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(dim // heads), dim=-1) @ split[2]
    att = F.linear(att.transpose(1, 2).reshape(tokens.shape), w["attn.to_out.0.weight"], w["attn.to_out.0.bias"])
    x = x + torch.tanh(w["alpha_attn"]) * att[:, :visual]
    h = F.layer_norm(x, (dim,), w["norm2.weight"], w["norm2.bias"])
    value, gate = F.linear(h, w["ff.net.0.proj.weight"], w["ff.net.0.proj.bias"]).chunk(2, dim=-1)
    ff = F.linear(value * F.gelu(gate), w["ff.net.2.weight"], w["ff.net.2.bias"])
    return x + torch.tanh(w["alpha_dense"]) * ff


async def test_comfy_gligen_builds_the_loader_nodes_network(shims: Any, tmp_path: Path) -> None:
    gligen_module, sd_module = _mod("comfy.gligen"), _mod("comfy.sd")
    weights = _tiny_gligen_sd()
    with torch.no_grad():  # non-zero gates, so the blocks change what they see
        for k in ("alpha_attn", "alpha_dense"):
            for key in [key for key in weights if key.endswith(k)]:
                weights[key] = torch.tensor(0.7)
    network = gligen_module.load_gligen(weights)
    assert isinstance(network, gligen_module.Gligen) and network.max_objs == 30 and network.key_dim == KEY_DIM
    assert len(network.module_list) == 6
    assert all(isinstance(b, gligen_module.GatedSelfAttentionDense) for b in network.module_list)
    assert isinstance(network.position_net, gligen_module.PositionNet)

    # One box on a 16 x 24 latent, phrase of the position net's width, batch of 2.
    phrase = torch.randn(network.position_net.in_dim, generator=torch.Generator().manual_seed(4))
    patch = network.set_position((2, 4, 16, 24), [(phrase, 8, 12, 4, 6)], torch.device("cpu"))
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(5))
    got = patch(x, {"transformer_index": 0})
    boxes = torch.zeros(2, 30, 4)
    boxes[:, 0] = torch.tensor([6 / 24, 4 / 16, 18 / 24, 12 / 16])
    masks = torch.zeros(2, 30)
    masks[:, 0] = 1.0
    phrases = torch.zeros(2, 30, phrase.shape[0])
    phrases[:, 0] = phrase
    block = {k.split(".fuser.")[1]: v for k, v in weights.items() if k.startswith("input_blocks.1.1.")}
    with torch.no_grad():
        objs = _grounding_reference(weights, boxes, masks, phrases)
        expected = _gated_reference(block, x, objs, heads=8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # comfy.sd.load_gligen: the GLIGENLoader node's patcher around the same network.
    save_file(weights, str(tmp_path / "gligen.safetensors"))
    patcher = sd_module.load_gligen(str(tmp_path / "gligen.safetensors"))
    assert isinstance(patcher, _mod("comfy.model_patcher").ModelPatcher)
    assert isinstance(patcher.model, gligen_module.Gligen)
    again = patcher.model.set_position((2, 4, 16, 24), [(phrase, 8, 12, 4, 6)], torch.device("cpu"))
    torch.testing.assert_close(again(x, {"transformer_index": 0}), got)

    with pytest.raises(GLIGENError, match="not a GLIGEN model"):
        gligen_module.load_gligen({"model.diffusion_model.x": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="load_gligen"):
        sd_module.load_gligen(str(tmp_path / "missing.safetensors"))


async def test_fourier_embedder_is_the_references(shims: Any) -> None:
    embedder = _mod("comfy.gligen").FourierEmbedder(num_freqs=8)
    boxes = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(embedder(boxes), _fourier_reference(boxes, 8), rtol=1e-5, atol=1e-5)
    assert embedder(boxes).shape == (2, 3, 64)
    with pytest.raises(ValueError, match="last dimension"):
        embedder(boxes, cat_dim=0)
