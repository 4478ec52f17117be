"""Samplers on rectified-flow models (the reference's ``CONST`` model samplings: SD3, Flux ...).

On a flow model x = (1 - sigma) x0 + sigma noise, so alpha = 1 - sigma where eps models have 1.
The reference runs flow forms of euler_ancestral, dpm_2_ancestral and dpmpp_2s_ancestral there,
makes euler(_ancestral)_cfg_pp and the half-log-SNR samplers (the DPM-Solver++ SDE family, ER-SDE,
SEEDS, SA-Solver) use the flow half-log-SNR log((1 - sigma) / sigma), and starts the latter just
below sigma 1. The flow forms are checked against their formulas written out below, on a toy flow
denoiser; a constant denoiser checks that every one of them keeps the flow's marginals; and the
tiny SD1 model patched with ModelSamplingSD3 shows the KSampler taking the flow path.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from plugins.core_nodes.ksampler import run_ksampler
from plugins.core_nodes.models import adapters
from plugins.core_nodes.nodes import model_advanced as ma
from plugins.core_nodes.sampling import kdiffusion
from plugins.core_nodes.sampling import model_sampling as ms
from plugins.core_nodes.sampling.noise import default_noise_sampler
from plugins.core_nodes.sampling.prediction import make_sampling
from plugins.core_nodes.sampling.samplers import SAMPLER_NAMES, sample
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete, ksampler_sigmas
from plugins.core_nodes.sampling.snr import (
    half_log_snr_to_sigma,
    is_flow,
    offset_first_sigma_for_snr,
    sigma_to_half_log_snr,
)

from . import tiny_pipeline

SEED = 42
SHIFT = 3.0
NOISE = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def flow_sampling(shift: float = SHIFT) -> Any:
    """SD3's model sampling: shifted discrete flow times with the CONST prediction."""
    config = SimpleNamespace(sampling_settings={"shift": shift, "multiplier": 1000})
    return ms.model_sampling_class(ms.ModelSamplingDiscreteFlow, ms.CONST)(config)


def _col(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma


def toy_flow(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(0, 1) under the flow, plus a nonlinear term so steps differ."""
    s = _col(sigma, x)
    return x * (1 - s) / ((1 - s) ** 2 + s**2) + 0.1 * torch.sin(x)


class ToyFlowCFG:
    """The toy flow denoiser with a made-up unconditional branch, for the CFG++ samplers."""

    def __init__(self, uncond_offset: float) -> None:
        self.uncond_offset = uncond_offset

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return toy_flow(x, sigma)

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        denoised = toy_flow(x, sigma)
        return denoised, denoised + self.uncond_offset * torch.cos(x)


class _WithSampling:
    """A k-diffusion model carrying its model sampling, as the reference's wrapped models do."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sampling: Any) -> None:
        self.fn, self.model_sampling = fn, sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.fn(x, sigma)


def _noises(x: torch.Tensor, seed: int = SEED) -> Callable[[], torch.Tensor]:
    """The per-step noise the samplers draw (the default sampler: one generator, seed + 1)."""
    draw = default_noise_sampler(x, seed=seed)
    zero = torch.tensor(0.0)
    return lambda: draw(zero, zero)


# --- the flow forms, written out ------------------------------------------------------------------


def _rf_split(s: float, s_next: float, eta: float) -> tuple[float, float, float]:
    """sigma_down = s_next (1 + (s_next / s - 1) eta); x is re-weighted by
    (1 - s_next) / (1 - sigma_down) and gets fresh noise of variance
    s_next^2 - (sigma_down (1 - s_next) / (1 - sigma_down))^2."""
    down = s_next * (1 + (s_next / s - 1) * eta)
    ratio = (1 - s_next) / (1 - down)
    renoise = max(s_next**2 - (down * ratio) ** 2, 0.0) ** 0.5
    return down, ratio, renoise


def written_euler_ancestral_rf(x: torch.Tensor, sigmas: list[float], eta: float) -> torch.Tensor:
    noise = _noises(x)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d0 = toy_flow(x, torch.tensor(s))
        if s_next == 0:
            x = d0
            continue
        down, ratio, renoise = _rf_split(s, s_next, eta)
        # Along the straight flow path to sigma_down, x0 estimate held.
        x = (down / s) * x + (1 - down / s) * d0
        if eta > 0:
            x = ratio * x + renoise * noise()
    return x


def written_dpm_2_ancestral_rf(x: torch.Tensor, sigmas: list[float], eta: float) -> torch.Tensor:
    noise = _noises(x)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d0 = toy_flow(x, torch.tensor(s))
        if s_next == 0:
            x = d0
            continue
        down, ratio, renoise = _rf_split(s, s_next, eta)
        mid = (s * down) ** 0.5  # geometric midpoint
        x_mid = x + (x - d0) / s * (mid - s)
        slope = (x_mid - toy_flow(x_mid, torch.tensor(mid))) / mid
        x = x + slope * (down - s)
        x = ratio * x + renoise * noise()
    return x


def written_dpmpp_2s_ancestral_rf(x: torch.Tensor, sigmas: list[float], eta: float) -> torch.Tensor:
    def lam(s: float) -> float:
        return float(torch.log(torch.tensor((1 - s) / s, dtype=torch.float64)))

    noise = _noises(x)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d0 = toy_flow(x, torch.tensor(s))
        if s_next == 0:
            x = d0
            continue
        down, ratio, renoise = _rf_split(s, s_next, eta)
        # Intermediate point halfway in log((1 - sigma) / sigma); at sigma 1 that is -inf, so 0.9999.
        mid = 0.9999 if s == 1.0 else 1 / (1 + torch.exp(torch.tensor((lam(s) + lam(down)) / 2)).item())
        u = (mid / s) * x + (1 - mid / s) * d0
        d_mid = toy_flow(u, torch.tensor(mid))
        x = (down / s) * x + (1 - down / s) * d_mid
        if eta > 0:
            x = ratio * x + renoise * noise()
    return x


def written_euler_ancestral_cfg_pp_flow(
    model: ToyFlowCFG, x: torch.Tensor, sigmas: list[float], eta: float
) -> torch.Tensor:
    """CFG++ on a flow: noise estimate from the unconditional x0, the ancestral split made on the
    eps-style levels sigma / (1 - sigma), everything scaled by the next alpha = 1 - s_next."""
    noise = _noises(x)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        guided, uncond = model.denoise_with_uncond(x, torch.tensor(s))
        if s_next == 0:
            x = guided
            continue
        a_s, a_t = 1 - s, 1 - s_next
        eps = (x - a_s * uncond) / s
        to = s_next / a_t
        # sigma_up^2 = to^2 (1 - (to / from)^2), from = s / a_s (infinite at s = 1)
        to_over_from = to * a_s / s
        up = min(to, eta * to * (1 - to_over_from**2) ** 0.5) if eta else 0.0
        down = (to**2 - up**2) ** 0.5
        x = a_t * guided + a_t * down * eps
        if eta > 0:
            x = x + a_t * up * noise()
    return x


WRITTEN: dict[str, Callable[[torch.Tensor, list[float], float], torch.Tensor]] = {
    "euler_ancestral": written_euler_ancestral_rf,
    "dpm_2_ancestral": written_dpm_2_ancestral_rf,
    "dpmpp_2s_ancestral": written_dpmpp_2s_ancestral_rf,
}


def _start(sigmas: torch.Tensor) -> torch.Tensor:
    # CONST noise scaling on an empty latent: x = sigma_0 * noise.
    return NOISE * sigmas[0]


@pytest.mark.parametrize("denoise", [1.0, 0.7])
@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_ancestral_samplers_run_their_flow_forms(name: str, denoise: float) -> None:
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", name, 6, denoise)
    assert (float(sigmas[0]) == 1.0) == (denoise == 1.0)
    out = sample(toy_flow, NOISE, sigmas, name, SEED, torch.zeros_like(NOISE), model_sampling=flow)
    expected = WRITTEN[name](_start(sigmas), sigmas.tolist(), 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    # The eps formulas on the same sigmas (an eps model sampling, same start) land elsewhere.
    eps = sample(
        toy_flow, NOISE, sigmas, name, SEED, torch.zeros_like(NOISE), model_sampling=ModelSamplingDiscrete()
    )
    assert (eps - out).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", sorted(WRITTEN))
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_rf_functions_take_eta_and_ignore_the_model_kind(name: str, eta: float) -> None:
    """``sample_<name>_RF`` (the reference's names) run the flow form whatever the model, with
    the caller's eta; eta 0 adds no noise."""
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", name, 5, 0.8)
    x = _start(sigmas)
    rf = kdiffusion.SAMPLE_FUNCTIONS[f"{name}_RF"]
    # An eps model sampling: the _RF functions do not look at it.
    out = rf(_WithSampling(toy_flow, ModelSamplingDiscrete()), x, sigmas, extra_args={"seed": SEED}, eta=eta)
    torch.testing.assert_close(out, WRITTEN[name](x, sigmas.tolist(), eta), atol=2e-5, rtol=1e-5)


def test_euler_ancestral_rf_with_eta_0_is_the_flow_euler_step() -> None:
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", "euler", 6)
    latent = torch.zeros_like(NOISE)
    euler = sample(toy_flow, NOISE, sigmas, "euler", SEED, latent, model_sampling=flow)
    x = _start(sigmas)
    out = kdiffusion.SAMPLE_FUNCTIONS["euler_ancestral"](
        _WithSampling(toy_flow, flow), x, sigmas, extra_args={"seed": SEED}, eta=0.0
    )
    torch.testing.assert_close(out, euler, atol=1e-5, rtol=1e-5)


def test_k_diffusion_functions_dispatch_on_the_model_sampling() -> None:
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", "euler_ancestral", 6)
    x = _start(sigmas)
    fn = kdiffusion.SAMPLE_FUNCTIONS["euler_ancestral"]
    on_flow = fn(_WithSampling(toy_flow, flow), x, sigmas, extra_args={"seed": SEED})
    torch.testing.assert_close(
        on_flow, written_euler_ancestral_rf(x, sigmas.tolist(), 1.0), atol=2e-5, rtol=1e-5
    )
    on_eps = fn(_WithSampling(toy_flow, ModelSamplingDiscrete()), x, sigmas, extra_args={"seed": SEED})
    assert (on_eps - on_flow).abs().max().item() > 1e-2


@pytest.mark.parametrize(("name", "eta"), [("euler_ancestral_cfg_pp", 1.0), ("euler_cfg_pp", 0.0)])
def test_euler_cfg_pp_uses_the_flow_alpha(name: str, eta: float) -> None:
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", name, 6)
    model = ToyFlowCFG(0.3)
    out = sample(model, NOISE, sigmas, name, SEED, torch.zeros_like(NOISE), model_sampling=flow)
    expected = written_euler_ancestral_cfg_pp_flow(model, _start(sigmas), sigmas.tolist(), eta)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_euler_cfg_pp_without_guidance_is_euler_on_a_flow() -> None:
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", "euler", 6)
    latent = torch.zeros_like(NOISE)
    euler = sample(toy_flow, NOISE, sigmas, "euler", SEED, latent, model_sampling=flow)
    same = sample(ToyFlowCFG(0.0), NOISE, sigmas, "euler_cfg_pp", SEED, latent, model_sampling=flow)
    torch.testing.assert_close(same, euler, atol=1e-5, rtol=1e-5)


# --- which samplers have flow handling in the reference -------------------------------------------

# The reference's samplers that read the model sampling's kind (directly or through its half-log-SNR
# helpers) or its noise scaling; every other sampler runs the same arithmetic on any model.
FLOW_AWARE = frozenset(
    {
        "euler_ancestral",
        "euler_ancestral_cfg_pp",
        "euler_cfg_pp",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_sde_gpu",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_gpu",
        "exp_heun_2_x0",
        "exp_heun_2_x0_sde",
        "er_sde",
        "seeds_2",
        "seeds_3",
        "sa_solver",
        "sa_solver_pece",
        "lcm",  # re-noises through the model sampling's noise scaling
    }
)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_flow_handling_is_where_the_reference_has_it(name: str) -> None:
    """Same sigmas and start point under a flow and an eps model sampling: only the samplers with
    flow handling in the reference give different results (dpmpp_2s_ancestral_cfg_pp, res_multistep,
    dpmpp_2m ... keep their eps formulas on flow models there too)."""
    sigmas = ksampler_sigmas(flow_sampling(), "simple", name, 5, 0.9)
    model = ToyFlowCFG(0.3)
    latent = torch.zeros_like(NOISE)
    on_flow = sample(model, NOISE, sigmas, name, SEED, latent, model_sampling=flow_sampling())
    on_eps = sample(model, NOISE, sigmas, name, SEED, latent, model_sampling=ModelSamplingDiscrete())
    assert torch.isfinite(on_flow).all()
    differs = not torch.allclose(on_flow, on_eps, atol=1e-4, equal_nan=True)
    assert differs == (name in FLOW_AWARE)


def _constant(c: float, seen: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    class Constant:
        """Data that is one point: the x0 estimate is ``c`` everywhere, conditional or not."""

        def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            seen.append((x.clone(), sigma[0].clone()))
            return torch.full_like(x, c)

        def denoise_with_uncond(
            self, x: torch.Tensor, sigma: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            out = self(x, sigma)
            return out, out

    return Constant()


STOCHASTIC_FLOW = sorted(FLOW_AWARE - {"lcm", "exp_heun_2_x0"})


@pytest.mark.parametrize("name", STOCHASTIC_FLOW)
def test_flow_marginals_are_kept(name: str) -> None:
    """With one-point data c the flow's marginal at sigma is (1 - sigma) c + sigma N(0, 1): every
    point the model is asked about must look like that (mean and spread over a large latent). The
    eps formulas on a flow model drift off it (their alpha is 1 instead of 1 - sigma)."""
    c = 3.0
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(3))
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", name, 6)
    out = sample(_constant(c, seen), noise, sigmas, name, SEED, torch.zeros_like(noise), model_sampling=flow)
    assert torch.allclose(out, torch.full_like(out, c), atol=1e-4)
    assert len(seen) >= 6
    for x, sigma in seen:
        s = float(sigma)
        assert 0 < s <= 1
        assert float(x.mean()) == pytest.approx((1 - s) * c, abs=0.04), s
        assert float(x.std()) == pytest.approx(s, rel=0.04, abs=0.01), s


# --- half-log-SNR helpers and the first-sigma offset ----------------------------------------------


def test_half_log_snr_per_model_kind() -> None:
    sigma = torch.tensor([0.2, 0.5, 0.9])
    flow, eps = flow_sampling(), ModelSamplingDiscrete()
    torch.testing.assert_close(sigma_to_half_log_snr(sigma, flow), torch.log((1 - sigma) / sigma))
    torch.testing.assert_close(sigma_to_half_log_snr(sigma, eps), -torch.log(sigma))
    for sampling in (flow, eps):
        back = half_log_snr_to_sigma(sigma_to_half_log_snr(sigma, sampling), sampling)
        torch.testing.assert_close(back, sigma)
    assert is_flow(flow) and not is_flow(eps)
    # Flux's sampling and the ModelSamplingDiscrete node's img_to_img_flow choice are flows too.
    assert is_flow(ms.model_sampling_class(ms.ModelSamplingFlux, ms.CONST)(None))
    assert is_flow(make_sampling("img_to_img_flow")) and not is_flow(make_sampling("v_prediction"))


def test_first_sigma_offset_only_for_flow_schedules_at_the_top() -> None:
    flow = flow_sampling()
    top = torch.tensor([1.0, 0.6, 0.0])
    moved = offset_first_sigma_for_snr(top, flow)
    # sigma at 0.01% of the shifted schedule: shift t / (1 + (shift - 1) t) at t = 0.9999
    t = 0.9999
    assert float(moved[0]) == pytest.approx(SHIFT * t / (1 + (SHIFT - 1) * t))
    assert top[0] == 1.0 and torch.equal(moved[1:], top[1:])  # a copy
    lower = torch.tensor([0.8, 0.3, 0.0])
    assert offset_first_sigma_for_snr(lower, flow) is lower
    eps_sigmas = torch.tensor([14.6, 1.0, 0.0])
    assert offset_first_sigma_for_snr(eps_sigmas, ModelSamplingDiscrete()) is eps_sigmas


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_sde", "er_sde", "seeds_2", "sa_solver"])
def test_snr_samplers_start_below_sigma_1_on_a_flow(name: str) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    flow = flow_sampling()
    sigmas = ksampler_sigmas(flow, "simple", name, 4)
    assert float(sigmas[0]) == 1.0
    out = sample(
        _constant(0.5, seen), NOISE, sigmas, name, SEED, torch.zeros_like(NOISE), model_sampling=flow
    )
    assert torch.isfinite(out).all()
    assert float(seen[0][1]) == pytest.approx(flow.percent_to_sigma(1e-4))
    assert float(seen[0][1]) < 1.0


# --- through a MODEL patched with ModelSamplingSD3 ------------------------------------------------


@pytest.fixture(scope="module")
def sd3_sampled_sd1(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tiny_pipeline.write_checkpoint(
        tmp_path_factory.mktemp("flow_ckpt") / "tiny_sd1.safetensors", "sd1"
    )
    model, clip, _vae = adapters.load_checkpoint(path)
    (patched,) = ma.ModelSamplingSD3().patch(model, SHIFT)
    cond, pooled = clip.encode("a red kite")
    return patched, [[cond, {"pooled_output": pooled}]]


def _recording(model: Any) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """A clone whose model calls record (x, sigma, denoised)."""
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def wrapper(apply: Any, args: dict[str, Any]) -> torch.Tensor:
        out = apply(args["input"], args["timestep"], **args["c"])
        calls.append((args["input"].clone(), args["timestep"].clone(), out.clone()))
        return out

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


@pytest.mark.usefixtures("one_torch_thread")
def test_ksampler_on_a_sd3_patched_model_takes_the_flow_path(sd3_sampled_sd1: Any) -> None:
    patched, positive = sd3_sampled_sd1
    sampling = patched.get_model_object("model_sampling")
    assert is_flow(sampling)
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    seed, steps = 5, 3

    # euler_ancestral: each step from the recorded (x, denoised) must be the flow form's.
    m, calls = _recording(patched)
    out = run_ksampler(m, seed, steps, 1.0, "euler_ancestral", "simple", positive, positive, empty)["samples"]
    sigmas = ksampler_sigmas(sampling, "simple", "euler_ancestral", steps).tolist()
    assert [float(s[0]) for _, s, _ in calls] == pytest.approx(sigmas[:-1])
    noise = _noises(calls[0][0], seed)
    for i, (x, _, denoised) in enumerate(calls):
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            expected = denoised
        else:
            down, ratio, renoise = _rf_split(s, s_next, 1.0)
            expected = ratio * ((down / s) * x + (1 - down / s) * denoised) + renoise * noise()
            eps_down = s_next**2 / s  # what the eps form would step to, before its own noise
            assert not torch.allclose(calls[i + 1][0], x + (x - denoised) / s * (eps_down - s), atol=1e-2)
        # KSampler hands back the latent in VAE space: the last step is compared in model space.
        nxt = calls[i + 1][0] if i + 1 < len(calls) else patched.latent_format.process_in(out)
        torch.testing.assert_close(nxt, expected, atol=1e-4, rtol=1e-4)

    # dpmpp_2s_ancestral: its first intermediate call is at sigma 0.9999, the flow form's stand-in
    # for the midpoint of log((1 - sigma) / sigma) from sigma 1 (the eps form would use sigma_next).
    m, calls = _recording(patched)
    run_ksampler(m, seed, steps, 1.0, "dpmpp_2s_ancestral", "simple", positive, positive, empty)
    called = [float(s[0]) for _, s, _ in calls]
    assert called[0] == pytest.approx(1.0) and called[1] == pytest.approx(0.9999)


def test_rf_samplers_are_reachable_by_their_reference_names() -> None:
    for name in ("euler_ancestral_RF", "dpm_2_ancestral_RF", "dpmpp_2s_ancestral_RF"):
        assert kdiffusion.SAMPLE_FUNCTIONS[name].__name__ == f"sample_{name}"
    assert "euler_ancestral_RF" not in SAMPLER_NAMES  # not a KSampler choice
