"""Types and small formulas shared by every sampler family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .noise import NoiseSampler, default_noise_sampler
from .schedules import ModelSamplingDiscrete
from .snr import half_log_snr_to_sigma, is_flow, offset_first_sigma_for_snr, sigma_to_half_log_snr

# model(x, sigma) -> denoised x0 estimate; ``sigma`` has one entry per batch item.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# step_callback(step_index, denoised, x)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
# model(x, sigma) -> (denoised, unconditional denoised), for the CFG++ samplers.
CFGDenoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SamplerUnavailable(ValueError):
    """The sampler exists in the reference but needs something this call cannot give it."""


@dataclass
class SamplerContext:
    """What a sampler needs besides the current latent and the sigmas."""

    model: Denoiser
    seed: int | None
    model_sampling: ModelSamplingDiscrete
    callback: StepCallback | None = None
    uncond_model: CFGDenoiser | None = None
    # A caller's own noise sampler (the k-diffusion ``noise_sampler=`` argument) replaces the
    # default and Brownian-tree ones.
    noise_sampler_override: NoiseSampler | None = None

    def denoise_cfg(
        self, x: torch.Tensor, sigma: torch.Tensor, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided and unconditional x0 predictions, for samplers that step along the latter."""
        if self.uncond_model is None:
            raise SamplerUnavailable(f"sampler {name!r} needs the unconditional prediction of a CFG pass")
        return self.uncond_model(x, sigma * x.new_ones([x.shape[0]]))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma * x.new_ones([x.shape[0]]))

    @property
    def noise_scale(self) -> float:
        """The scale of the noise the model was trained on (ModelNoiseScale sets it on a flow
        model sampling; 1 elsewhere). The ancestral and SDE samplers multiply ``s_noise`` by it,
        as the reference's do, so the noise they add matches the scaled starting noise."""
        return float(getattr(self.model_sampling, "noise_scale", 1.0))

    @property
    def flow(self) -> bool:
        """Whether the model is a rectified flow (the reference's ``CONST`` model samplings):
        some samplers then run their flow forms, as the reference's do."""
        return is_flow(self.model_sampling)

    def half_log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda = log(alpha / sigma) under this model's sampling (see :mod:`.snr`)."""
        return sigma_to_half_log_snr(sigma, self.model_sampling)

    def sigma_at(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        """The sigma whose half-log-SNR is ``half_log_snr`` under this model's sampling."""
        return half_log_snr_to_sigma(half_log_snr, self.model_sampling)

    def snr_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """``sigmas`` as the half-log-SNR samplers walk them: a flow schedule starting at 1 starts
        just below it instead, where lambda is finite."""
        return offset_first_sigma_for_snr(sigmas, self.model_sampling)

    def report(self, i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, denoised, x)

    def noise_sampler(self, x: torch.Tensor) -> NoiseSampler:
        """The per-step noise: the caller's, else ``comfy.k_diffusion.sampling.default_noise_sampler``
        as it is now (packs replace it), else our own."""
        if self.noise_sampler_override is not None:
            return self.noise_sampler_override
        from plugins.core_nodes.patchpoints import lookup

        make = lookup("comfy.k_diffusion.sampling", "default_noise_sampler", default_noise_sampler)
        return make(x, seed=self.seed)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma (Karras et al. 2022, eq. 6)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    missing = ndim - v.ndim
    return v[(...,) + (None,) * missing] if missing > 0 else v


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Split a step into a deterministic move down to ``sigma_down`` plus fresh noise ``sigma_up``.

    sigma_up^2 + sigma_down^2 = sigma_to^2, with sigma_up chosen so the marginal at ``sigma_to``
    matches the forward process (DDPM posterior variance when ``eta`` is 1).
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) for the eps/v schedules, where alpha is 1 in k-diffusion's x."""
    return sigma.log().neg()


def ei_h_phi_1(h: torch.Tensor) -> torch.Tensor:
    """h * phi_1(h) of exponential integrators."""
    return torch.expm1(h)


def ei_h_phi_2(h: torch.Tensor) -> torch.Tensor:
    """h * phi_2(h) of exponential integrators."""
    return (torch.expm1(h) - h) / h


def res_multistep_step(
    x: torch.Tensor,
    current: torch.Tensor,
    previous: torch.Tensor,
    sigma: torch.Tensor,
    sigma_down: torch.Tensor,
    sigma_prev: torch.Tensor,
    old_sigma_down: torch.Tensor,
) -> torch.Tensor:
    """Second-order RES multistep update of ``x`` from ``sigma`` to ``sigma_down``.

    ``current`` and ``previous`` are the x0 estimates the step extrapolates from (made at
    ``sigma`` and at ``sigma_prev``); the previous step landed at ``old_sigma_down``. Shared by
    res_multistep and its CFG++ twin, which differ only in what they feed it.
    """
    t, t_old = half_log_snr(sigma), half_log_snr(old_sigma_down)
    t_next, t_prev = half_log_snr(sigma_down), half_log_snr(sigma_prev)
    h = t_next - t
    c2 = (t_prev - t_old) / h
    phi1 = torch.expm1(-h) / (-h)
    phi2 = (phi1 - 1.0) / (-h)
    b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
    b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
    return (-h).exp() * x + h * (b1 * current + b2 * previous)
