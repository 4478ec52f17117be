"""Our samplers with k-diffusion's calling convention, for ``comfy.k_diffusion.sampling``.

``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``
calls ``model(x, sigma * s_in, **extra_args)`` (a denoiser returning x0) and
``callback({"x", "i", "sigma", "sigma_hat", "denoised"})`` once per step, exactly as the
reference's functions do, and runs the same arithmetic as the KSampler node (each function is
a thin adapter over :mod:`plugins.core_nodes.sampling`). ``dpm_fast`` / ``dpm_adaptive`` take
``(sigma_min, sigma_max[, n])`` instead of ``sigmas``, as in the reference.

The CFG++ samplers need the unconditional prediction: like the reference they add a post-CFG
function to ``extra_args["model_options"]`` that captures it, so they work with any guider that
honours ``model_options`` (ours and the reference-shaped ones of packs). ``disable`` (the
progress bar switch) is accepted and ignored: progress is reported by the caller's callback.
Keyword options our implementation does not have (``s_churn`` ...) are ignored with a warning.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from . import ancestral_rf, dpm_solver, unipc
from .brownian import BrownianTreeNoiseSampler
from .common import (
    SamplerContext,
    SamplerUnavailable,
    ancestral_step,
    append_dims,
    ei_h_phi_1,
    ei_h_phi_2,
    to_d,
)
from .names import SAMPLER_NAMES
from .noise import NoiseSampler, default_noise_sampler
from .samplers import SamplerFn, core_sampler
from .schedules import ModelSamplingDiscrete, exponential_sigmas, karras_sigmas, require_positive_sigmas
from .snr import half_log_snr_to_sigma, offset_first_sigma_for_snr, sigma_to_half_log_snr

log = logging.getLogger("comfykernel.core_nodes")

KDiffusionSampler = Callable[..., torch.Tensor]
# The names the reference's k_diffusion.sampling has a sample_<name> for (ksampler() picks
# them by name); ddim and the UniPC pair live elsewhere in the reference.
KSAMPLER_NAMES: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n not in ("ddim", "uni_pc", "uni_pc_bh2"))
# Options every reference sampler takes whose default leaves the arithmetic unchanged.
_NEUTRAL = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0, "return_info": False}


def _model_sampling(model: Any) -> Any:
    """The model sampling behind a k-diffusion ``model`` (inpaint wrapper -> guider -> model)."""
    node = model
    for _ in range(4):
        found = getattr(node, "model_sampling", None)
        if found is not None:
            return found
        node = getattr(node, "inner_model", None)
        if node is None:
            break
    return ModelSamplingDiscrete()


def _keywords(fn: SamplerFn) -> frozenset[str]:
    params = list(inspect.signature(fn).parameters.values())[3:]
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def _run(
    name: str,
    fn: SamplerFn,
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Mapping[str, Any] | None,
    callback: Callable[[dict[str, Any]], Any] | None,
    noise_sampler: NoiseSampler | None,
    options: dict[str, Any],
) -> torch.Tensor:
    from plugins.core_nodes.cfg import with_post_cfg_function

    extra = dict(extra_args or {})
    accepted = _keywords(fn)
    ignored = [k for k, v in options.items() if k not in accepted and _NEUTRAL.get(k, object()) != v]
    if ignored:
        log.warning("sample_%s: options %s are not supported and were ignored", name, sorted(ignored))
    kwargs = {k: v for k, v in options.items() if k in accepted}

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x, sigma, **extra)

    def denoise_with_uncond(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def capture(args: dict[str, Any]) -> torch.Tensor:
            captured.append(args["uncond_denoised"])
            return args["denoised"]

        model_options = with_post_cfg_function(extra["model_options"], capture, disable_cfg1=True)
        out = model(x, sigma, **{**extra, "model_options": model_options})
        if not captured:
            raise SamplerUnavailable(f"sampler {name!r}: the model ignored the post-CFG function")
        return out, captured[-1]

    report = None
    if callback is not None:
        user = callback
        last = len(sigmas) - 1

        def report(i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
            sigma = sigmas[min(i, last)]
            user({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

    ctx = SamplerContext(
        model=denoise,
        seed=extra.get("seed"),
        model_sampling=_model_sampling(model),
        callback=report,
        # Without model_options there is no CFG pass to capture the unconditional prediction
        # from; the samplers then behave as the reference's do without one.
        uncond_model=denoise_with_uncond if "model_options" in extra else None,
        noise_sampler_override=noise_sampler,
    )
    return fn(ctx, x, sigmas, **kwargs)


def _make(name: str, fn: SamplerFn) -> KDiffusionSampler:
    def sample(
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: Mapping[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        disable: bool | None = None,
        noise_sampler: NoiseSampler | None = None,
        **options: Any,
    ) -> torch.Tensor:
        return _run(name, fn, model, x, sigmas, extra_args, callback, noise_sampler, options)

    sample.__name__ = sample.__qualname__ = f"sample_{name}"
    sample.__doc__ = f"The {name!r} sampler with k-diffusion's signature."
    return sample


def k_diffusion_sampler(name: str, fn: SamplerFn) -> KDiffusionSampler:
    """``fn`` (one of our ``(ctx, x, sigmas, **options)`` samplers) with k-diffusion's calling
    convention, for sampler objects built outside the named table (``KSAMPLER(fn)``)."""
    return _make(name, fn)


def _fake_sigmas(sigma_min: Any, sigma_max: Any, n: int) -> torch.Tensor:
    """A schedule from ``sigma_max`` to ``sigma_min`` with ``n`` steps: all our dpm_fast /
    dpm_adaptive read of ``sigmas`` is its end points and its length."""
    low = torch.as_tensor(sigma_min, dtype=torch.float32).reshape(())
    high = torch.as_tensor(sigma_max, dtype=torch.float32).reshape(())
    return torch.stack([high] * max(n, 1) + [low])


def sample_dpm_fast(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma_min: Any,
    sigma_max: Any,
    n: int,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-fast from ``sigma_max`` to ``sigma_min`` in ``n`` model calls."""
    sigmas = _fake_sigmas(sigma_min, sigma_max, n)
    options = {"eta": eta, "s_noise": s_noise}
    return _run(
        "dpm_fast", dpm_solver.sample_dpm_fast, model, x, sigmas, extra_args, callback, noise_sampler, options
    )


def sample_dpm_adaptive(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma_min: Any,
    sigma_max: Any,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    return_info: bool = False,
) -> Any:
    """Adaptive-step DPM-Solver from ``sigma_max`` to ``sigma_min``; with ``return_info`` the
    result is ``(x, {})`` (step statistics are not collected)."""
    sigmas = _fake_sigmas(sigma_min, sigma_max, 1)
    options = {
        "order": order,
        "rtol": rtol,
        "atol": atol,
        "h_init": h_init,
        "pcoeff": pcoeff,
        "icoeff": icoeff,
        "dcoeff": dcoeff,
        "accept_safety": accept_safety,
        "eta": eta,
        "s_noise": s_noise,
    }
    out = _run(
        "dpm_adaptive",
        dpm_solver.sample_dpm_adaptive,
        model,
        x,
        sigmas,
        extra_args,
        callback,
        noise_sampler,
        options,
    )
    return (out, {}) if return_info else out


# The rectified-flow forms the reference's euler_ancestral / dpm_2_ancestral / dpmpp_2s_ancestral
# hand over to on flow models; the reference's module has them as sample_<name>_RF, so
# ksampler("<name>_RF") finds them there, and here. They run the flow formulas on any model.
_RF_SAMPLERS: Mapping[str, SamplerFn] = {
    "euler_ancestral_RF": ancestral_rf.sample_euler_ancestral_rf,
    "dpm_2_ancestral_RF": ancestral_rf.sample_dpm_2_ancestral_rf,
    "dpmpp_2s_ancestral_RF": ancestral_rf.sample_dpmpp_2s_ancestral_rf,
}

# sample_<name> for every name ksampler() resolves through k_diffusion.sampling.
SAMPLE_FUNCTIONS: Mapping[str, KDiffusionSampler] = {
    **{
        name: _make(name, core_sampler(name))
        for name in KSAMPLER_NAMES
        if name not in ("dpm_fast", "dpm_adaptive")
    },
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    **{name: _make(name, fn) for name, fn in _RF_SAMPLERS.items()},
}
# comfy.extra_samplers.uni_pc's pair, same convention.
sample_unipc = _make("uni_pc", unipc.sample_unipc)
sample_unipc_bh2 = _make("uni_pc_bh2", partial(unipc.sample_unipc, variant="bh2"))


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Any = "cpu"
) -> torch.Tensor:
    return karras_sigmas(n, float(sigma_min), float(sigma_max), rho).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device: Any = "cpu") -> torch.Tensor:
    return exponential_sigmas(n, float(sigma_min), float(sigma_max)).to(device)


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: Any = "cpu"
) -> torch.Tensor:
    """Log-sigma along a ramp raised to ``rho`` (``rho`` 1 is the exponential schedule)."""
    require_positive_sigmas("polyexponential", sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    sigmas = torch.exp(ramp * (log_max - log_min) + log_min)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_vp(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: Any = "cpu"
) -> torch.Tensor:
    """The continuous VP-SDE schedule (Song et al. 2021) at ``n`` times from 1 to ``eps_s``."""
    t = torch.linspace(1, eps_s, n, device=device)
    sigmas = torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t))
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """``(sigma_down, sigma_up)`` of an ancestral step (``(sigma_to, 0)`` without ``eta``)."""
    return ancestral_step(sigma_from, sigma_to, eta)


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


__all__ = [
    "KSAMPLER_NAMES",
    "SAMPLE_FUNCTIONS",
    "BrownianTreeNoiseSampler",
    "append_dims",
    "append_zero",
    "default_noise_sampler",
    "ei_h_phi_1",
    "ei_h_phi_2",
    "get_ancestral_step",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "half_log_snr_to_sigma",
    "k_diffusion_sampler",
    "offset_first_sigma_for_snr",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_unipc",
    "sample_unipc_bh2",
    "sigma_to_half_log_snr",
    "to_d",
]
