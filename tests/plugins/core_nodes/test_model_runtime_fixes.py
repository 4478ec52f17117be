"""Loose ends of the MODEL runtime: each a behaviour of the reference a node or pack relies on.

* ModelComputeDtype: the network computes in the chosen dtype (weights cast per layer at each
  call, inputs cast, the result back in float32), the cached network untouched.
* ModelNoiseScale: the ancestral and SDE samplers multiply ``s_noise`` by the model sampling's
  ``noise_scale``, as the reference's do.
* ModelSamplingDiscrete's ``img_to_img_flow``: sampling starts from the image itself and the
  result comes back as ``1 - latent`` (the reference's ``IMG_TO_IMG_FLOW``).
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
from plugins.core_nodes.sampling import model_sampling as ms
from plugins.core_nodes.sampling.common import SamplerContext
from plugins.core_nodes.sampling.prediction import make_sampling
from plugins.core_nodes.sampling.samplers import core_sampler, sample

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


# --- ModelNoiseScale in the samplers --------------------------------------------------------------

# The reference multiplies s_noise by model_sampling.noise_scale in these (comfy/k_diffusion/
# sampling.py: the *_RF ancestral samplers, the CFG++ ancestral ones, res_multistep, the DPM++ SDE
# family, ER-SDE, SEEDS and SA-Solver).
NOISE_SCALED = [
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3",
    "exp_heun_2_x0_sde", "sa_solver",
]  # fmt: skip


def _flow_sampling(noise_scale: float) -> Any:
    sampling = ms.model_sampling_class(ms.ModelSamplingDiscreteFlow, ms.CONST)()
    sampling.set_parameters(shift=3.0)
    sampling.set_noise_scale(noise_scale)
    return sampling


def _run_sampler(name: str, noise_scale: float, s_noise: float) -> torch.Tensor:
    """``name`` on a fixed toy denoiser with a fixed noise stream (so only the scaling differs)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 4, 4, generator=g)
    target = torch.randn(1, 4, 4, 4, generator=g)
    draws = [torch.randn(1, 4, 4, 4, generator=g) for _ in range(64)]
    taken = iter(draws)

    def noise(sigma: Any, sigma_next: Any) -> torch.Tensor:
        return next(taken)

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.7 * target + 0.05 * x

    def model_with_uncond(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(x, sigma), 0.5 * target + 0.1 * x

    ctx = SamplerContext(
        model=model, seed=3, model_sampling=_flow_sampling(noise_scale),
        uncond_model=model_with_uncond, noise_sampler_override=noise,
    )  # fmt: skip
    sigmas = torch.tensor([0.9, 0.6, 0.35, 0.15, 0.0])
    fn = core_sampler(name)
    return fn(ctx, x, sigmas, s_noise=s_noise)


@pytest.mark.parametrize("name", NOISE_SCALED)
def test_noise_scale_multiplies_the_samplers_s_noise(name: str) -> None:
    """With the model sampling's noise_scale k, a sampler adds the noise it adds at s_noise * k."""
    scaled = _run_sampler(name, noise_scale=2.5, s_noise=0.8)
    assert torch.allclose(scaled, _run_sampler(name, noise_scale=1.0, s_noise=0.8 * 2.5), atol=1e-6)
    assert not torch.allclose(scaled, _run_sampler(name, noise_scale=1.0, s_noise=0.8), atol=1e-3)


# --- img_to_img_flow ------------------------------------------------------------------------------


def test_img_to_img_flow_starts_from_the_image_and_returns_one_minus_the_latent() -> None:
    """noise_scaling(sigma, noise, image) = image (no noise mixed in); inverse_noise_scaling(sigma,
    latent) = 1 - latent. Through KSampler's sample(): the first call sees the image itself and
    an Euler run to sigma 0 ends at the last prediction p, handed back as 1 - p."""
    sampling = make_sampling("img_to_img_flow")
    g = torch.Generator().manual_seed(6)
    image, noise, prediction = (torch.randn(1, 4, 4, 4, generator=g) for _ in range(3))
    sigma = torch.tensor([0.7])
    assert torch.equal(sampling.noise_scaling(sigma, noise, image), image)
    assert torch.equal(sampling.inverse_noise_scaling(sigma, prediction), 1.0 - prediction)
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return prediction

    sigmas = torch.cat([sampling.sigmas[[999, 500, 0]], torch.zeros(1)])
    out = sample(model, noise, sigmas, "euler", 0, image, model_sampling=sampling)
    assert torch.equal(seen[0], image)
    torch.testing.assert_close(out, 1.0 - prediction)
