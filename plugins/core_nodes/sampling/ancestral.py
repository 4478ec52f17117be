"""Samplers that add fresh Gaussian noise each step, drawn from one seeded CPU generator.

On a rectified-flow model (``ctx.flow``) euler_ancestral, dpm_2_ancestral and dpmpp_2s_ancestral
run their flow forms from :mod:`.ancestral_rf` instead, as the reference's do.
"""

from __future__ import annotations

import torch

from .ancestral_rf import sample_dpm_2_ancestral_rf, sample_dpmpp_2s_ancestral_rf, sample_euler_ancestral_rf
from .common import SamplerContext, ancestral_step, half_log_snr, res_multistep_step, to_d


def sample_euler_ancestral(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    if ctx.flow:
        return sample_euler_ancestral_rf(ctx, x, sigmas, eta, s_noise)
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpm_2_ancestral(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    if ctx.flow:
        return sample_dpm_2_ancestral_rf(ctx, x, sigmas, eta, s_noise)
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = ctx.denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        sigma_mid = sigma.log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, ctx.denoise(x_2, sigma_mid))
        x = x + d_2 * (sigma_down - sigma)
        x = x + noise(sigma, sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpmpp_2s_ancestral(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2S) single-step second order, with ancestral noise.

    ``cfg_pp`` is the CFG++ variant: each step starts from x + (denoised - uncond), where
    ``uncond`` is the unconditional prediction of the most recent model call. Without a CFG pass
    (no ``ctx.uncond_model``) the reference leaves it at zero, and so do we.

    On a flow model the plain form runs :func:`.ancestral_rf.sample_dpmpp_2s_ancestral_rf`;
    the CFG++ form keeps these eps formulas there too, as the reference's does.
    """
    if ctx.flow and not cfg_pp:
        return sample_dpmpp_2s_ancestral_rf(ctx, x, sigmas, eta, s_noise)
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    uncond: torch.Tensor | float = 0.0

    def evaluate(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nonlocal uncond
        if cfg_pp and ctx.uncond_model is not None:
            denoised, uncond = ctx.denoise_cfg(x_in, sigma, "dpmpp_2s_ancestral_cfg_pp")
            return denoised
        return ctx.denoise(x_in, sigma)

    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = evaluate(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        ctx.report(i, denoised, x)
        if sigma_down == 0:
            if cfg_pp:
                x = denoised + to_d(x, sigma, uncond) * sigma_down
            else:
                x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = half_log_snr(sigma), half_log_snr(torch.as_tensor(sigma_down))
            h = t_next - t
            s = t + 0.5 * h
            base = x + (denoised - uncond) if cfg_pp else x
            x_2 = ((-s).exp() / (-t).exp()) * base - (-h * 0.5).expm1() * denoised
            denoised_2 = evaluate(x_2, (-s).exp())
            # The reference reads the unconditional prediction again after the second call.
            base = x + (denoised - uncond) if cfg_pp else x
            x = ((-t_next).exp() / (-t).exp()) * base - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigma, sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_res_multistep(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 0.0, s_noise: float = 1.0
) -> torch.Tensor:
    """RES second-order multistep exponential integrator (Zhang et al. 2023, arXiv:2308.02157)."""
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    old_denoised: torch.Tensor | None = None
    old_sigma_down: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = ctx.denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        sigma_down = torch.as_tensor(sigma_down)
        ctx.report(i, denoised, x)
        if sigma_down == 0 or old_denoised is None:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            assert old_sigma_down is not None
            x = res_multistep_step(
                x, denoised, old_denoised, sigma, sigma_down, sigmas[i - 1], old_sigma_down
            )
        if sigmas[i + 1] > 0:
            x = x + noise(sigma, sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x


def sample_ddpm(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Ancestral DDPM steps (Ho et al. 2020) written in the variance-preserving x."""
    noise = ctx.noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        alpha_cumprod = 1 / ((sigma * sigma) + 1)
        alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            var = (1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)
            mu = mu + var.sqrt() * noise(sigma, sigma_prev)
        x = mu
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev**2.0)
    return x


def sample_lcm(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    s_noise: float = 1.0,
    s_noise_end: float | None = None,
    noise_clip_std: float = 0.0,
) -> torch.Tensor:
    """Latent consistency sampling: jump to the x0 estimate, then re-noise to the next sigma.

    The re-noising noise is scaled by a multiplier going linearly from ``s_noise`` (first step)
    to ``s_noise_end`` (last step; default ``s_noise``) and, with ``noise_clip_std`` > 0, clamped
    to that many of its standard deviations first (the SamplerLCM node's options)."""
    noise = ctx.noise_sampler(x)
    steps = max(1, len(sigmas) - 1)
    start = float(s_noise)
    end = start if s_noise_end is None else float(s_noise_end)
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ctx.report(i, denoised, x)
        x = denoised
        if sigmas[i + 1] > 0:
            fresh = noise(sigmas[i], sigmas[i + 1])
            if noise_clip_std > 0:
                bound = noise_clip_std * fresh.std()
                fresh = fresh.clamp(min=-bound, max=bound)
            scale = start + (end - start) * (i / (steps - 1) if steps > 1 else 0.0)
            if scale != 1.0:
                fresh = fresh * scale
            x = ctx.model_sampling.noise_scaling(sigmas[i + 1], fresh, x)
    return x
