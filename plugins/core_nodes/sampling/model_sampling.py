"""The reference's model samplings (``comfy.model_sampling``): noise schedules and prediction types.

A model sampling is one schedule class (``ModelSampling*``: the sigma table, ``timestep`` /
``sigma`` conversions, ``percent_to_sigma``) combined with one prediction type (``EPS``,
``V_PREDICTION``, ``EDM``, ``CONST``...: ``calculate_input``, ``calculate_denoised``,
``noise_scaling``, ``inverse_noise_scaling``), as the reference composes them
(``class ModelSamplingAdvanced(ModelSamplingDiscreteFlow, CONST)``). The model-sampling nodes
(:mod:`plugins.core_nodes.nodes.model_advanced`) build them with :func:`model_sampling_class` and
install them with ``add_object_patch("model_sampling", ...)``; the samplers and the UNet runner use
only the methods above, so any combination (a pack's too) drives the KSampler unchanged. The
``comfy.model_sampling`` compat module re-exports this module.

The schedules, written out (``t`` in (0, 1], ``i`` = 1..N):

* discrete DDPM: sigma_i = sqrt((1 - abar_i) / abar_i), abar the cumulative product of 1 - beta;
* continuous EDM / V: sigma = exp(linspace(log sigma_min, log sigma_max, 1000)); the network's
  timestep is 0.25 log(sigma) (EDM) or atan(sigma) * 2 / pi (V);
* discrete flow (SD3, AuraFlow): sigma(t) = shift t / (1 + (shift - 1) t), t = i / 1000, the
  network's timestep sigma * multiplier (1000 for SD3, 1 for AuraFlow);
* Flux: sigma(t) = e^shift / (e^shift + (1/t - 1)), t = i / 10000, timestep = sigma;
* Stable Cascade: abar(t) = cos^2((t + s) / (1 + s) pi/2) / cos^2(s / (1 + s) pi/2), s = 0.008,
  its log-SNR lowered by 2 log(shift), clamped to [1e-4, 0.9999]; sigma = sqrt((1 - abar) / abar);
* Cosmos rectified flow: timestep = sigma / (sigma + 1), sigma(t) = t / (1 - t) up to sigma_max.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch

__all__ = [
    "CONST",
    "COSMOS_RFLOW",
    "EDM",
    "EPS",
    "IMG_TO_IMG",
    "IMG_TO_IMG_FLOW",
    "V_PREDICTION",
    "V_PREDICTION_DDPM",
    "X0",
    "ModelSamplingContinuousEDM",
    "ModelSamplingContinuousV",
    "ModelSamplingCosmosRFlow",
    "ModelSamplingDiscrete",
    "ModelSamplingDiscreteEDM",
    "ModelSamplingDiscreteFlow",
    "ModelSamplingFlux",
    "StableCascadeSampling",
    "flux_time_shift",
    "model_sampling_class",
    "rescale_zero_terminal_snr_sigmas",
    "time_snr_shift",
]

# Sigma the reference answers for "before the first step" (percent 0) on unbounded schedules.
_TOP_SIGMA = 999999999.9
# The value the reference pins the last alpha-bar to after the zero-terminal-SNR rescale (a true
# zero would make the top sigma infinite).
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def _per_item(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """``sigma`` shaped to broadcast over a batch of ``ndim``-dimensional latents."""
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


def _settings(model_config: Any) -> dict[str, Any]:
    return dict(getattr(model_config, "sampling_settings", None) or {})


def linear_betas(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """The DDPM betas "linear" in sqrt(beta), as in the original latent-diffusion code (float64)."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2


def betas_to_sigmas(betas: torch.Tensor) -> torch.Tensor:
    """sigma_i = sqrt((1 - abar_i) / abar_i), abar the cumulative product of 1 - beta."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` moved so the noisiest step has (almost) zero SNR (Lin et al. 2023, algorithm 1):
    sqrt(alpha-bar) is shifted to end at 0 and rescaled to keep its first value."""
    alphas_bar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


# --- prediction types ---------------------------------------------------------------------------


class EPS:
    """The network predicts the noise; its input is scaled to unit variance."""

    sigma_data = 1.0

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sigma = _per_item(sigma, noise.ndim)
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        sigma = _per_item(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        sigma = _per_item(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma**2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


class V_PREDICTION(EPS):  # noqa: N801 - the reference's name
    """The network predicts v (SD2 768-v and friends)."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        sigma = _per_item(sigma, model_output.ndim)
        sd2 = self.sigma_data**2
        return (
            model_input * sd2 / (sigma**2 + sd2)
            - model_output * sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        )


class V_PREDICTION_DDPM(EPS):  # noqa: N801 - the reference's name
    """v prediction on the unscaled variance-preserving input (CogVideoX):
    x0 = (x - v sigma) / sqrt(sigma^2 + 1)."""

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        sigma = _per_item(sigma, model_output.ndim)
        return (model_input - model_output * sigma) / (sigma**2 + 1.0) ** 0.5


class EDM(V_PREDICTION):
    """Karras et al.'s EDM preconditioning (the output's sign flipped against v)."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        sigma = _per_item(sigma, model_output.ndim)
        sd2 = self.sigma_data**2
        return (
            model_input * sd2 / (sigma**2 + sd2)
            + model_output * sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        )


class X0(EPS):
    """The network predicts the denoised latent itself."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        return model_output


class IMG_TO_IMG(X0):  # noqa: N801 - the reference's name
    """An image-to-image model: sees the latent unscaled and predicts the clean latent."""

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise


class CONST:
    """Rectified flow: x = sigma * (noise_scale * noise) + (1 - sigma) * latent; the network
    predicts the velocity noise - latent."""

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        sigma = _per_item(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        sigma = _per_item(sigma, noise.ndim)
        # A model trained on noise of another scale (ModelNoiseScale) gets its noise scaled so.
        scale = getattr(self, "noise_scale", 1.0)
        return sigma * (scale * noise) + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        sigma = _per_item(sigma, latent.ndim)
        return latent / (1.0 - sigma)


class IMG_TO_IMG_FLOW(CONST):  # noqa: N801 - the reference's name
    """An image-to-image flow model: starts from the image itself and predicts the result."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        return model_output

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        return latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return 1.0 - latent


class COSMOS_RFLOW:  # noqa: N801 - the reference's name
    """Cosmos' rectified flow read on EDM-style sigmas: the flow time is s = sigma / (sigma + 1)."""

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s = _per_item(sigma / (sigma + 1), noise.ndim)
        return noise * (1.0 - s)

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        s = _per_item(sigma / (sigma + 1), model_output.ndim)
        return model_input * (1.0 - s) - model_output * s

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        sigma = _per_item(sigma, noise.ndim)
        return noise * sigma + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


# --- schedules ----------------------------------------------------------------------------------


class SigmaTable:
    """A schedule kept as an ascending sigma table (``sigma_min`` first), as every sampler reads it."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]


class DiscreteTable(SigmaTable):
    """Timestep <-> sigma on a discrete table: the timestep is the table index, read in log sigma
    (the DDPM schedules; the core SD1/SDXL schedule uses it too)."""

    log_sigmas: torch.Tensor

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The index of the table entry nearest to ``sigma`` in log space."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep, interpolating log-sigma linearly."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return _TOP_SIGMA
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class _Table(SigmaTable, torch.nn.Module):
    """A schedule as a module: its table is a buffer, moved with the model."""


class ModelSamplingDiscrete(DiscreteTable, _Table):
    """The discrete DDPM schedule (``linear`` in sqrt(beta) by default) as a table of sigmas."""

    def __init__(self, model_config: Any = None, zsnr: bool | None = None) -> None:
        super().__init__()
        settings = _settings(model_config)
        if zsnr is None:
            zsnr = bool(settings.get("zsnr", False))
        self._register_schedule(
            beta_schedule=settings.get("beta_schedule", "linear"),
            timesteps=int(settings.get("timesteps", 1000)),
            linear_start=float(settings.get("linear_start", 0.00085)),
            linear_end=float(settings.get("linear_end", 0.012)),
            zsnr=zsnr,
        )
        self.sigma_data = 1.0

    def _register_schedule(
        self,
        given_betas: torch.Tensor | None = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        zsnr: bool = False,
    ) -> None:
        if given_betas is not None:
            betas = torch.as_tensor(given_betas, dtype=torch.float64)
        elif beta_schedule == "linear":
            betas = linear_betas(linear_start, linear_end, timesteps)
        elif beta_schedule == "cosine":
            steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
            alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
            alphas = alphas / alphas[0]
            betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
        elif beta_schedule == "sqrt_linear":
            betas = torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
        elif beta_schedule == "sqrt":
            betas = torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
        else:
            raise ValueError(f"unknown beta schedule {beta_schedule!r}")
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.zsnr = zsnr
        sigmas = betas_to_sigmas(betas)
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())



class ModelSamplingDiscreteEDM(ModelSamplingDiscrete):
    """The discrete table with EDM's timestep reading, 0.25 log(sigma)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()


class ModelSamplingContinuousEDM(_Table):
    """A continuous log-linear schedule between ``sigma_min`` and ``sigma_max`` (EDM models)."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        settings = _settings(model_config)
        self.set_parameters(
            float(settings.get("sigma_min", 0.002)),
            float(settings.get("sigma_max", 120.0)),
            float(settings.get("sigma_data", 1.0)),
        )

    def set_parameters(self, sigma_min: float, sigma_max: float, sigma_data: float) -> None:
        self.sigma_data = sigma_data
        # The table is only for schedulers that read one; timestep/sigma are closed forms.
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return _TOP_SIGMA
        if percent >= 1.0:
            return 0.0
        log_min = math.log(float(self.sigma_min))
        return math.exp((math.log(float(self.sigma_max)) - log_min) * (1.0 - percent) + log_min)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    """The log-linear table with a v model's timestep, atan(sigma) * 2 / pi in [0, 1)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep * math.pi / 2).tan()


class ModelSamplingCosmosRFlow(ModelSamplingContinuousEDM):
    """The log-linear table read as a rectified flow: timestep = sigma / (sigma + 1)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma / (sigma + 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        sigma_max = self.sigma_max
        timestep = torch.as_tensor(timestep)
        # t / (1 - t) grows without bound near 1: the top of the table caps it.
        limit = sigma_max / (sigma_max + 1)
        return torch.where(timestep >= limit, sigma_max, timestep / (1 - timestep))


def time_snr_shift(alpha: float, t: Any) -> Any:
    """``t`` moved towards the noisy end by ``alpha`` (SD3's resolution-dependent shift)."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Flux's exponential time shift of ``t`` by ``mu``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class ModelSamplingDiscreteFlow(_Table):
    """Rectified-flow sigmas in (0, 1], shifted by ``shift`` (SD3 / AuraFlow style)."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        settings = _settings(model_config)
        self.set_noise_scale(settings.get("noise_scale", 1.0))
        self.set_parameters(shift=float(settings.get("shift", 1.0)), multiplier=settings.get("multiplier", 1000))

    def set_parameters(self, shift: float = 1.0, timesteps: int = 1000, multiplier: float = 1000) -> None:
        self.shift = shift
        self.multiplier = multiplier
        ts = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)
        self.register_buffer("sigmas", ts)

    def set_noise_scale(self, noise_scale: float) -> None:
        """The scale of the noise the model was trained on (CONST multiplies the noise by it)."""
        self.noise_scale = float(noise_scale)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


class StableCascadeSampling(ModelSamplingDiscrete):
    """Stable Cascade's cosine schedule with its log-SNR shifted by ``-2 log(shift)``."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        self.set_parameters(float(_settings(model_config).get("shift", 1.0)))

    def set_parameters(self, shift: float = 1.0, cosine_s: float = 8e-3) -> None:
        self.shift = shift
        self.cosine_s = torch.tensor(cosine_s)
        self._init_alpha_cumprod = torch.cos(self.cosine_s / (1 + self.cosine_s) * torch.pi * 0.5) ** 2
        # The table is for schedulers that read one: 10000 evenly spaced times.
        self.num_timesteps = 10000
        times = torch.arange(1, self.num_timesteps + 1, dtype=torch.float32) / self.num_timesteps
        self.set_sigmas(self.sigma(times).float())

    def sigma(self, timestep: Any) -> torch.Tensor:
        t = torch.as_tensor(timestep)
        alpha_cumprod = torch.cos((t + self.cosine_s) / (1 + self.cosine_s) * torch.pi * 0.5) ** 2
        alpha_cumprod = alpha_cumprod / self._init_alpha_cumprod
        if self.shift != 1.0:
            log_snr = (alpha_cumprod / (1 - alpha_cumprod)).log() + 2 * torch.log(1.0 / torch.tensor(self.shift))
            alpha_cumprod = log_snr.sigmoid()
        alpha_cumprod = alpha_cumprod.clamp(0.0001, 0.9999)
        return ((1 - alpha_cumprod) / alpha_cumprod) ** 0.5

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        var = (1 / (sigma * sigma + 1)).clamp(0, 1.0)
        s, min_var = self.cosine_s.to(var.device), self._init_alpha_cumprod.to(var.device)
        return ((var * min_var) ** 0.5).acos() / (torch.pi * 0.5) * (1 + s) - s

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return _TOP_SIGMA
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent)))


class ModelSamplingFlux(_Table):
    """Flux's flow sigmas: ``flux_time_shift(shift, 1, t)`` over 10000 steps."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        self.set_parameters(shift=float(_settings(model_config).get("shift", 1.15)))

    def set_parameters(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        self.shift = shift
        ts = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps)
        self.register_buffer("sigmas", ts)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, 1.0, timestep)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return flux_time_shift(self.shift, 1.0, 1.0 - percent)


@cache
def model_sampling_class(schedule: type, prediction: type) -> type:
    """The reference's ``class ModelSamplingAdvanced(schedule, prediction)``: one class per pair
    (kept, so two MODELs patched alike hold samplings of the same type)."""
    return type("ModelSamplingAdvanced", (schedule, prediction), {"__module__": __name__})
