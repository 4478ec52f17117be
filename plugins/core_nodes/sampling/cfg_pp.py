"""CFG++ samplers (Chung et al. 2024, arXiv:2406.08070).

They step along the *unconditional* prediction and add the guidance only through the x0
estimate, so they need both predictions of each model call; ``ctx.denoise_cfg`` provides them
(it raises :class:`SamplerUnavailable` when the caller's model has no CFG pass).
"""

from __future__ import annotations

import torch

from .common import SamplerContext, ancestral_step, half_log_snr, res_multistep_step, to_d


def sample_euler_ancestral_cfg_pp(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    name: str = "euler_ancestral_cfg_pp",
) -> torch.Tensor:
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = ctx.denoise_cfg(x, sigma, name)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
            continue
        # x = alpha * x0 + sigma * noise, with alpha = sigma * exp(lambda): 1 for eps models,
        # 1 - sigma for flow ones. CFG++ takes the noise from the unconditional x0 estimate and
        # renoises the guided one with it; the ancestral split is made on sigma / alpha (the
        # eps-style noise level) and scaled back by the next alpha.
        alpha_s = sigma * ctx.half_log_snr(sigma).exp()
        alpha_t = sigma_next * ctx.half_log_snr(sigma_next).exp()
        d = to_d(x, sigma, alpha_s * uncond)
        sigma_down, sigma_up = ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    return sample_euler_ancestral_cfg_pp(ctx, x, sigmas, eta=0.0, s_noise=0.0, name="euler_cfg_pp")


def sample_dpmpp_2m_cfg_pp(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    old_uncond: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = ctx.denoise_cfg(x, sigmas[i], "dpmpp_2m_cfg_pp")
        ctx.report(i, denoised, x)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def sample_res_multistep_cfg_pp(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 0.0, s_noise: float = 1.0
) -> torch.Tensor:
    name = "res_multistep_ancestral_cfg_pp" if eta else "res_multistep_cfg_pp"
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    old_uncond: torch.Tensor | None = None
    old_sigma_down: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised, uncond = ctx.denoise_cfg(x, sigma, name)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        sigma_down = torch.as_tensor(sigma_down)
        ctx.report(i, denoised, x)
        if sigma_down == 0 or old_uncond is None:
            x = denoised + to_d(x, sigma, uncond) * sigma_down
        else:
            assert old_sigma_down is not None
            x = x + (denoised - uncond)
            x = res_multistep_step(x, uncond, old_uncond, sigma, sigma_down, sigmas[i - 1], old_sigma_down)
        if sigmas[i + 1] > 0:
            x = x + noise(sigma, sigmas[i + 1]) * s_noise * sigma_up
        old_uncond = uncond
        old_sigma_down = sigma_down
    return x


def sample_gradient_estimation_cfg_pp(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, ge_gamma: float = 2.0
) -> torch.Tensor:
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = ctx.denoise_cfg(x, sigmas[i], "gradient_estimation_cfg_pp")
        d = to_d(x, sigmas[i], uncond)
        ctx.report(i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1]
            if i >= 1:
                assert old_d is not None
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
