"""Loose ends of the MODEL runtime: each a behaviour of the reference a node or pack relies on.

* ModelComputeDtype: the network computes in the chosen dtype (weights cast per layer at each
  call, inputs cast, the result back in float32), the cached network untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from plugins.core_nodes.models import checkpoint as ckpt
from plugins.core_nodes.models.adapters import DiffusionModel
from plugins.core_nodes.models.unet import build_unet
from plugins.core_nodes.nodes import model_advanced as ma

from .tiny_sd import CONTEXT, UNET_CONFIGS, unet_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(weights: dict[str, torch.Tensor] | None = None) -> DiffusionModel:
    """A tiny SD1 MODEL without a server (no manager: it runs where its weights are)."""
    unet = build_unet(weights if weights is not None else unet_weights("sd1"), dtype=torch.float32)
    return DiffusionModel(unet, ckpt.ModelFamily("sd1", "eps", UNET_CONFIGS["sd1"]))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3.0
    context = torch.randn(2, 5, CONTEXT["sd1"], generator=g)
    return x, torch.tensor([3.0, 3.0]), {"c_crossattn": context}


# --- ModelComputeDtype ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_compute_dtype_runs_the_network_in_that_dtype(name: str) -> None:
    """The float32 network with the compute dtype set gives what the same network stored in that
    dtype gives (casting each weight at its layer's call is the same rounding), returned in
    float32; the cached network keeps its float32 weights and the plain MODEL its result."""
    dtype = ma.compute_dtype(name)
    model = _model()
    (patched,) = ma.ModelComputeDtype().patch(model, name)
    stored = copy.deepcopy(model.unet).to(dtype)
    stored_model = DiffusionModel(stored, model.family)
    x, sigma, cond = _inputs()
    with torch.no_grad():
        plain = model(x, sigma, cond)
        got = patched(x, sigma, cond)
        expected = stored_model(x, sigma, cond)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert not torch.allclose(got, plain, atol=1e-4)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(model(x, sigma, cond), plain)


def test_compute_dtype_applies_with_weight_patches_and_on_the_bare_model() -> None:
    """A LoRA-style weight patch merges in float32 and is cast with the rest; the model's own
    ``apply_model`` (a pack's patcher class writes the object patch onto the model) casts too."""
    model = _model()
    key = "diffusion_model.input_blocks.1.1.proj_in.weight"
    weight = model.unet.get_parameter(key.removeprefix("diffusion_model."))
    diff = torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)) * 0.1
    lora = model.clone()
    lora.add_patches({key: ("diff", (diff,))}, 1.0)
    (patched,) = ma.ModelComputeDtype().patch(lora, "bf16")
    merged = copy.deepcopy(model.unet)
    with torch.no_grad():
        merged.get_parameter(key.removeprefix("diffusion_model.")).add_(diff)
    expected_model = DiffusionModel(merged.to(torch.bfloat16), model.family)
    x, sigma, cond = _inputs(1)
    with torch.no_grad():
        assert torch.equal(patched(x, sigma, cond), expected_model(x, sigma, cond))
        base = model.model
        base.manual_cast_dtype = torch.bfloat16
        try:
            direct = base.apply_model(x, sigma, c_crossattn=cond["c_crossattn"])
        finally:
            base.manual_cast_dtype = None
        stored = DiffusionModel(copy.deepcopy(model.unet).to(torch.bfloat16), model.family)
        assert torch.equal(direct, stored(x, sigma, cond))
