"""The rectified-flow forms of the ancestral samplers (the reference's ``*_RF`` functions).

On a flow model x = (1 - sigma) * x0 + sigma * noise, so the eps-model ancestral split (which
keeps the x0 weight at 1) would add the wrong amount of noise. These step deterministically to
a lower ``sigma_down`` along the flow, re-weight the x0 part to its weight at the next sigma and
add fresh noise to fill the rest (:func:`.snr.flow_ancestral_step`). The eps samplers in
:mod:`.ancestral` hand over to these when the model sampling is a flow one, as the reference's
do; the k-diffusion table also offers them by their reference names.
"""

from __future__ import annotations

import torch

from .common import SamplerContext, to_d
from .snr import flow_ancestral_step, flow_half_log_snr, flow_sigma

# The flow half-log-SNR is -inf at sigma 1, so a DPM-Solver++(2S) step that starts there takes
# its intermediate point at this sigma instead (as the reference does).
_TOP_INTERMEDIATE_SIGMA = 0.9999


def _toward(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor
) -> torch.Tensor:
    """x moved along the flow from ``sigma`` to ``sigma_to`` with the x0 estimate held fixed:
    an Euler step, exact on the straight path between ``denoised`` and x's noise."""
    ratio = sigma_to / sigma
    return ratio * x + (1 - ratio) * denoised


def sample_euler_ancestral_rf(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, signal_ratio, renoise = flow_ancestral_step(sigma, sigma_next, eta)
        x = _toward(x, denoised, sigma, sigma_down)
        if eta > 0:
            x = signal_ratio * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


def sample_dpm_2_ancestral_rf(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        sigma_down, signal_ratio, renoise = flow_ancestral_step(sigma, sigma_next, eta)
        ctx.report(i, denoised, x)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        # DPM-Solver-2: the slope at the geometric midpoint of sigma and sigma_down.
        sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, ctx.denoise(x_2, sigma_mid))
        x = x + d_2 * (sigma_down - sigma)
        # With eta 0 the renoise is 0 up to rounding, which can leave a square root of a tiny
        # negative number (NaN); nothing is added then.
        if eta > 0:
            x = signal_ratio * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


def sample_dpmpp_2s_ancestral_rf(
    ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """DPM-Solver++(2S) with its intermediate point halfway in flow half-log-SNR."""
    noise = ctx.noise_sampler(x)
    s_noise = s_noise * ctx.noise_scale  # ModelNoiseScale: the noise the model was trained on
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ctx.denoise(x, sigma)
        sigma_down, signal_ratio, renoise = flow_ancestral_step(sigma, sigma_next, eta)
        ctx.report(i, denoised, x)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            if sigma == 1.0:
                sigma_s = torch.as_tensor(_TOP_INTERMEDIATE_SIGMA, dtype=sigma.dtype, device=sigma.device)
            else:
                lam, lam_down = flow_half_log_snr(sigma), flow_half_log_snr(sigma_down)
                sigma_s = flow_sigma(lam + 0.5 * (lam_down - lam))
            denoised_s = ctx.denoise(_toward(x, denoised, sigma, sigma_s), sigma_s)
            x = _toward(x, denoised_s, sigma, sigma_down)
        if sigma_next > 0 and eta > 0:
            x = signal_ratio * x + noise(sigma, sigma_next) * s_noise * renoise
    return x
