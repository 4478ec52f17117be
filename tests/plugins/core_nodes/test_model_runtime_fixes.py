"""Loose ends of the MODEL runtime: each a behaviour of the reference a node or pack relies on.

* ModelComputeDtype: the network computes in the chosen dtype (weights cast per layer at each
  call, inputs cast, the result back in float32), the cached network untouched.
* ModelNoiseScale: the ancestral and SDE samplers multiply ``s_noise`` by the model sampling's
  ``noise_scale``, as the reference's do.
* ModelSamplingDiscrete's ``img_to_img_flow``: sampling starts from the image itself and the
  result comes back as ``1 - latent`` (the reference's ``IMG_TO_IMG_FLOW``).
* The ``bislerp`` latent resize slerps neighbouring pixels' channel vectors along each axis;
  ``lanczos`` resizes the image as 8-bit pixels through PIL.
* A MODEL whose class a pack swapped for its own ModelPatcher subclass (ComfyUI-GGUF's trick)
  still goes through the model manager to the compute device when it samples.
* A CLIP stored in bf16 behind casting layers encodes in float32 (position table included).
* The MODEL's ``ON_PREPARE_STATE`` callbacks run once per model evaluation, as the reference's
  ``calc_cond_batch`` calls ``current_patcher.prepare_state``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import checkpoint as ckpt
from plugins.core_nodes.models import clip as core_clip
from plugins.core_nodes.models.adapters import DiffusionModel
from plugins.core_nodes.models.extension import CallbacksMP
from plugins.core_nodes.models.manager import ModelManager
from plugins.core_nodes.models.operations import CastOperations
from plugins.core_nodes.models.patcher import ModelPatcher
from plugins.core_nodes.models.unet import build_unet
from plugins.core_nodes.nodes import model_advanced as ma
from plugins.core_nodes.nodes.resize import upscale
from plugins.core_nodes.sampling import model_sampling as ms
from plugins.core_nodes.sampling.common import SamplerContext
from plugins.core_nodes.sampling.prediction import make_sampling
from plugins.core_nodes.sampling.samplers import core_sampler, sample

from .tiny_pipeline import CLIP_L, clip_weights
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


# --- bislerp / lanczos ----------------------------------------------------------------------------


def _slerp_by_hand(a: list[float], b: list[float], t: float) -> list[float]:
    """slerp(a, b, t) = (sin((1-t) w) a/|a| + sin(t w) b/|b|) / sin(w) * ((1-t)|a| + t|b|),
    cos(w) = a.b / (|a||b|) (a zero vector has no direction: 0); when cos(w) > 1 - 1e-5 the result
    is a, when cos(w) < -1 + 1e-5 the straight blend (1-t) a + t b."""
    len_a, len_b = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
    ua = [v / len_a if len_a else 0.0 for v in a]
    ub = [v / len_b if len_b else 0.0 for v in b]
    cos = sum(x * y for x, y in zip(ua, ub, strict=True))
    if cos > 1 - 1e-5:
        return list(a)
    if cos < 1e-5 - 1:
        return [(1 - t) * x + t * y for x, y in zip(a, b, strict=True)]
    w = math.acos(cos)
    length = (1 - t) * len_a + t * len_b
    return [
        (math.sin((1 - t) * w) * x + math.sin(t * w) * y) / math.sin(w) * length
        for x, y in zip(ua, ub, strict=True)
    ]


def _source(i: int, old: int, new: int) -> tuple[int, int, float]:
    """Bilinear resizing's sample point for output ``i`` (half-pixel centres, clamped): the two
    neighbours and the fraction between them."""
    pos = min(max((i + 0.5) * old / new - 0.5, 0.0), old - 1)
    lower = math.floor(pos)
    return lower, min(lower + 1, old - 1), pos - lower


def _bislerp_by_hand(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    n, c, h, w = x.shape
    rows = [[[[0.0] * c for _ in range(width)] for _ in range(h)] for _ in range(n)]
    for b in range(n):
        for r in range(h):
            for i in range(width):
                lo, hi, t = _source(i, w, width)
                rows[b][r][i] = _slerp_by_hand(x[b, :, r, lo].tolist(), x[b, :, r, hi].tolist(), t)
    out = torch.zeros(n, c, height, width, dtype=torch.float64)
    for b in range(n):
        for j in range(height):
            lo, hi, t = _source(j, h, height)
            for i in range(width):
                out[b, :, j, i] = torch.tensor(_slerp_by_hand(rows[b][lo][i], rows[b][hi][i], t))
    return out


@pytest.mark.parametrize(("width", "height"), [(9, 7), (3, 2), (10, 4)])
def test_bislerp_is_the_per_pixel_slerp_along_each_axis(width: int, height: int) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 4, 5, generator=g)
    x[0, :, 1, 2] = 0.0  # no direction
    x[0, :, 2, 3] = x[0, :, 2, 2] * 2.0  # the same direction as its neighbour
    x[1, :, 0, 1] = -x[1, :, 0, 0]  # the opposite one
    got = upscale(x, width, height, "bislerp", "disabled")
    assert got.shape == (2, 4, height, width) and got.dtype == torch.float32
    expected = _bislerp_by_hand(x, width, height)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    # Not the bilinear resize it used to be.
    bilinear = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear")
    assert not torch.allclose(got, bilinear, atol=1e-3)
    # A half-precision latent keeps its dtype.
    assert upscale(x.half(), width, height, "bislerp", "disabled").dtype == torch.float16


def test_lanczos_resizes_8_bit_pixels_as_the_reference() -> None:
    """The image goes through PIL as uint8 (255 * value, clipped, truncated) and comes back as
    n / 255: the same numbers as PIL resizing the RGB image itself."""
    g = torch.Generator().manual_seed(9)
    image = torch.rand(2, 3, 10, 13, generator=g) * 1.2 - 0.1  # some values outside 0..1
    got = upscale(image, 17, 6, "lanczos", "disabled")
    expected = []
    for item in image:
        pixels = np.clip(255.0 * item.movedim(0, -1).numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((17, 6), resample=Image.Resampling.LANCZOS)
        expected.append(torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).movedim(-1, 0))
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.stack(expected))
    # One channel (a mask) works too.
    mask = upscale(image[:, :1], 17, 6, "lanczos", "disabled")
    assert torch.equal(mask, got[:, :1])


# --- a pack's patcher class still goes through the model manager ----------------------------------


class PackPatcher(ModelPatcher):
    """A pack's own MODEL class, put onto a loaded MODEL as ComfyUI-GGUF does
    (``self.__class__ = GGUFModelPatcher`` in its clone): the base class's behaviour applies."""


def _managed_model(tmp_path: Path) -> tuple[DiffusionModel, ModelManager, Any]:
    """A MODEL over a UNet the manager caches (as a checkpoint loader leaves it)."""
    manager = ModelManager(compute_device="cpu")
    path = tmp_path / "unet.safetensors"
    path.write_bytes(b"x")
    unet = manager.load("checkpoint", path, lambda _p, _check: build_unet(unet_weights("sd1"), dtype=torch.float32))
    model = DiffusionModel(unet, ckpt.ModelFamily("sd1", "eps", UNET_CONFIGS["sd1"]), manager)
    (entry,) = manager._entries.values()
    return model, manager, entry


def test_a_pack_patcher_class_samples_through_the_model_manager(tmp_path: Path) -> None:
    """The manager's bookkeeping sees the swapped MODEL's network used at each call (the LRU
    stamp of its cache entry moves, so it is the last model offloaded and is moved to the compute
    device like any MODEL), and the result is the plain MODEL's."""
    model, manager, entry = _managed_model(tmp_path)
    swapped = model.clone()
    swapped.__class__ = PackPatcher
    x, sigma, cond = _inputs(3)
    with torch.no_grad():
        expected = model(x, sigma, cond)
        before = entry.last_used
        got = swapped(x, sigma, cond)
    assert entry.last_used > before
    assert torch.equal(got, expected)
    # Its weight patches (merged in place by the base class for the call) apply there too.
    key = "diffusion_model.out.2.weight"
    delta = torch.randn(model.unet.get_parameter("out.2.weight").shape, generator=torch.Generator().manual_seed(5))
    lora, lora_swapped = model.clone(), swapped.clone()
    for m in (lora, lora_swapped):
        m.add_patches({key: ("diff", (delta * 0.1,))}, 1.0)
    with torch.no_grad():
        stamp = entry.last_used
        torch.testing.assert_close(lora_swapped(x, sigma, cond), lora(x, sigma, cond))
        assert entry.last_used > stamp
        assert torch.equal(model(x, sigma, cond), expected)


def test_the_manager_counts_a_cached_network_inside_a_module_as_used(tmp_path: Path) -> None:
    """``use`` on a module holding a cached one (the BaseModel around a cached UNet) stamps the
    cached entry as used (so making room offloads other models first)."""
    model, manager, entry = _managed_model(tmp_path)
    with manager.use(model.model) as device:
        assert device == torch.device("cpu")
    stamp = entry.last_used
    with manager.use(model.model):
        pass
    assert entry.last_used > stamp


# --- a CLIP with a storage dtype computes in float32 ----------------------------------------------


def test_a_bf16_stored_clip_behind_casting_layers_encodes_in_float32() -> None:
    """Weights kept in bf16 (a storage dtype, the layers casting them per call) encode as the
    float32 model holding the bf16-rounded weights: every step, the position table's addition
    included, runs in float32."""
    sd = {k: v for k, v in clip_weights(CLIP_L, 0).items() if not k.endswith("position_ids")}
    stored = core_clip.build_model(sd, "clip_l", None, CastOperations, torch.bfloat16)
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}
    rounded = core_clip.build_model({k: v.to(torch.bfloat16).float() for k, v in sd.items()}, "clip_l")
    ids = torch.tensor([[49406, 320, 1125, 539, 49407, 49407], [49406, 7, 8, 9, 10, 49407]]) % CLIP_L.vocab_size
    with torch.no_grad():
        got, expected = stored(ids, hidden_layer=-2), rounded(ids, hidden_layer=-2)
    assert got.last.dtype == torch.float32 and got.pooled.dtype == torch.float32
    assert got.hidden is not None and expected.hidden is not None
    assert torch.equal(got.last, expected.last)
    assert torch.equal(got.hidden, expected.hidden)
    assert torch.equal(got.pooled, expected.pooled)


# --- prepare_state ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "evaluations"), [("euler", 3), ("heun", 5)])
def test_prepare_state_callbacks_run_once_per_model_evaluation(sampler: str, evaluations: int) -> None:
    """Each evaluation (one per Euler step; two per Heun step but the last) calls the callbacks
    with the MODEL, that evaluation's sigma and the run's model options."""
    model = _model().clone()
    calls: list[tuple[Any, torch.Tensor, Any]] = []
    model.add_callback(CallbacksMP.ON_PREPARE_STATE, lambda p, t, options: calls.append((p, t.clone(), options)))
    context = torch.randn(1, 5, CONTEXT["sd1"], generator=torch.Generator().manual_seed(7))
    positive, negative = [[context, {}]], [[torch.zeros_like(context), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    run_ksampler(model, 1, 3, 4.0, sampler, "normal", positive, negative, latent)
    assert len(calls) == evaluations
    assert all(p.model is model.model for p, _, _ in calls)
    assert all("transformer_options" in options for _, _, options in calls)
    sigmas = [float(t.reshape(-1)[0]) for _, t, _ in calls]
    assert sigmas[0] == pytest.approx(float(model.model_sampling.sigma_max), rel=1e-5)
    s0, s1, s2 = sorted(set(sigmas), reverse=True)
    # Heun evaluates each step's end point too (sigma 0 excepted).
    assert sigmas == ([s0, s1, s2] if sampler == "euler" else [s0, s1, s1, s2, s2])
