"""The sampler registry and the KSampler-level entry point :func:`sample`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from . import ancestral, cfg_pp, dpm_solver, ode, sde, unipc
from .common import CFGDenoiser, Denoiser, SamplerContext, SamplerUnavailable
from .names import SAMPLER_NAMES
from .noise import next_seed
from .schedules import ModelSamplingDiscrete

SamplerFn = Callable[[SamplerContext, torch.Tensor, torch.Tensor], torch.Tensor]


__all__ = ["SAMPLER_NAMES", "SamplerUnavailable", "core_sampler", "sample"]

# The reference's order, which is also the order of the KSampler "sampler_name" dropdown.
_SAMPLERS: dict[str, SamplerFn] = {
    "euler": ode.sample_euler,
    "euler_cfg_pp": cfg_pp.sample_euler_cfg_pp,
    "euler_ancestral": ancestral.sample_euler_ancestral,
    "euler_ancestral_cfg_pp": cfg_pp.sample_euler_ancestral_cfg_pp,
    "heun": ode.sample_heun,
    "heunpp2": ode.sample_heunpp2,
    "exp_heun_2_x0": partial(sde.sample_seeds_2, eta=0.0, s_noise=0.0, r=1.0, solver_type="phi_2"),
    "exp_heun_2_x0_sde": partial(sde.sample_seeds_2, r=1.0, solver_type="phi_2"),
    "dpm_2": ode.sample_dpm_2,
    "dpm_2_ancestral": ancestral.sample_dpm_2_ancestral,
    "lms": ode.sample_lms,
    "dpm_fast": dpm_solver.sample_dpm_fast,
    "dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    "dpmpp_2s_ancestral": ancestral.sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": partial(ancestral.sample_dpmpp_2s_ancestral, cfg_pp=True),
    "dpmpp_sde": sde.sample_dpmpp_sde,
    "dpmpp_sde_gpu": partial(sde.sample_dpmpp_sde, cpu_tree=False),
    "dpmpp_2m": ode.sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": cfg_pp.sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sde.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": partial(sde.sample_dpmpp_2m_sde, cpu_tree=False),
    "dpmpp_2m_sde_heun": partial(sde.sample_dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": partial(sde.sample_dpmpp_2m_sde, solver_type="heun", cpu_tree=False),
    "dpmpp_3m_sde": sde.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": partial(sde.sample_dpmpp_3m_sde, cpu_tree=False),
    "ddpm": ancestral.sample_ddpm,
    "lcm": ancestral.sample_lcm,
    "ipndm": ode.sample_ipndm,
    "ipndm_v": ode.sample_ipndm_v,
    "deis": ode.sample_deis,
    "res_multistep": ancestral.sample_res_multistep,
    "res_multistep_cfg_pp": cfg_pp.sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": partial(ancestral.sample_res_multistep, eta=1.0),
    "res_multistep_ancestral_cfg_pp": partial(cfg_pp.sample_res_multistep_cfg_pp, eta=1.0),
    "gradient_estimation": ode.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": cfg_pp.sample_gradient_estimation_cfg_pp,
    "er_sde": sde.sample_er_sde,
    "seeds_2": sde.sample_seeds_2,
    "seeds_3": sde.sample_seeds_3,
    "sa_solver": sde.sample_sa_solver,
    "sa_solver_pece": partial(sde.sample_sa_solver, use_pece=True),
    # "ddim" is Euler plus a fresh (seed + 1) noise for the inpainting blend; see sample().
    "ddim": ode.sample_euler,
    "uni_pc": unipc.sample_unipc,
    "uni_pc_bh2": partial(unipc.sample_unipc, variant="bh2"),
}

# One list of names for the dropdown and the implementations: they must agree.
if tuple(_SAMPLERS) != SAMPLER_NAMES:  # pragma: no cover - a programming error, caught at import
    raise RuntimeError("sampling.names.SAMPLER_NAMES and the sampler table disagree")
# The *_gpu names differ from their plain twins only in drawing the Brownian tree with generators
# on the latent's device instead of the CPU; for CPU latents they give the same numbers.
_RANDOM_INPAINT_NOISE = frozenset({"ddim"})


def core_sampler(name: str) -> SamplerFn:
    """The implementation behind a KSampler sampler name (``ddim`` is Euler)."""
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}") from None


def _max_denoise(model_sampling: ModelSamplingDiscrete, sigmas: torch.Tensor) -> bool:
    max_sigma = float(model_sampling.sigma_max)
    sigma = float(sigmas[0])
    return abs(max_sigma - sigma) <= 1e-05 * max(abs(max_sigma), abs(sigma)) or sigma > max_sigma


def sample(
    model_fn: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler_name: str,
    extra_seed: int | None,
    latent_image: torch.Tensor,
    denoise_mask: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None = None,
    disable_noise: bool = False,
    model_sampling: ModelSamplingDiscrete | None = None,
) -> torch.Tensor:
    """Run one sampler from ``sigmas[0]`` down to ``sigmas[-1]`` and return the final latent.

    ``model_fn(x, sigma)`` must return the denoised (x0) prediction for a batch of ``x`` at
    per-item noise levels ``sigma``. The start point follows the reference: ``noise`` times
    sqrt(1 + sigma_max^2) when sampling from the model's top sigma (full denoise), otherwise
    ``noise`` times ``sigmas[0]``, plus ``latent_image``. ``extra_seed`` seeds the per-step noise
    of ancestral/SDE samplers. With ``denoise_mask`` (1 = repaint), the kept region is pinned to
    ``latent_image`` re-noised to the current sigma before every model call and restored in the
    model's output. ``callback(step, denoised, x, total_steps)`` is called once per step.
    """
    try:
        sampler = _SAMPLERS[sampler_name]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler_name!r}") from None
    ms = model_sampling if model_sampling is not None else ModelSamplingDiscrete()
    if disable_noise:
        noise = torch.zeros_like(latent_image)
    if len(sigmas) == 0:
        return latent_image

    inner = model_fn
    with_uncond: CFGDenoiser | None = getattr(model_fn, "denoise_with_uncond", None)
    inner_uncond = with_uncond
    if denoise_mask is not None:
        mask = denoise_mask
        keep = 1.0 - mask
        fill_noise = noise
        if sampler_name in _RANDOM_INPAINT_NOISE:
            seed = 41 if extra_seed is None else extra_seed
            generator = torch.Generator(device="cpu").manual_seed(next_seed(seed))
            fill_noise = (
                torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
            )

        def inner(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x = x * mask + ms.noise_scaling(sigma, fill_noise, latent_image) * keep
            out = model_fn(x, sigma)
            return out * mask + latent_image * keep

        if with_uncond is not None:
            uncond_fn = with_uncond

            def inner_uncond(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x = x * mask + ms.noise_scaling(sigma, fill_noise, latent_image) * keep
                out, uncond = uncond_fn(x, sigma)
                return out * mask + latent_image * keep, uncond

    total = len(sigmas) - 1
    step_cb = None
    if callback is not None:
        user_cb = callback

        def step_cb(i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
            user_cb(i, denoised, x, total)

    x = ms.noise_scaling(sigmas[0], noise, latent_image, _max_denoise(ms, sigmas))
    ctx = SamplerContext(
        model=inner, seed=extra_seed, model_sampling=ms, callback=step_cb, uncond_model=inner_uncond
    )
    samples = sampler(ctx, x, sigmas)
    return ms.inverse_noise_scaling(sigmas[-1], samples)
