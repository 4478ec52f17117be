"""``comfy.model_sampling``: noise schedules (``ModelSampling*``) and prediction types (``EPS``...).

Packs combine one of each into a class (``class Advanced(ModelSamplingDiscrete, V_PREDICTION)``)
and install an instance with ``model.add_object_patch("model_sampling", instance)``; the core
samplers and the UNet call only what these classes define (``calculate_input``,
``calculate_denoised``, ``noise_scaling``, ``inverse_noise_scaling``, ``timestep``, ``sigma``,
``percent_to_sigma``, ``sigmas``, ``sigma_min`` / ``sigma_max``), with the reference's formulas.
``ModelSamplingDiscrete`` with ``EPS`` gives exactly the sigmas of the core nodes' SD1/SDXL
schedule (``plugins.core_nodes.sampling.schedules``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

# One implementation of the zero-terminal-SNR rescale: the ModelSamplingDiscrete node's.
from plugins.core_nodes.sampling.prediction import rescale_zero_terminal_snr_sigmas

__all__ = [
    "CONST",
    "EDM",
    "EPS",
    "V_PREDICTION",
    "X0",
    "ModelSamplingContinuousEDM",
    "ModelSamplingDiscrete",
    "ModelSamplingDiscreteFlow",
    "ModelSamplingFlux",
    "flux_time_shift",
    "rescale_zero_terminal_snr_sigmas",
    "time_snr_shift",
]


def _per_item(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """``sigma`` shaped to broadcast over a batch of ``ndim``-dimensional latents."""
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


def _settings(model_config: Any) -> dict[str, Any]:
    return dict(getattr(model_config, "sampling_settings", None) or {})


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


class V_PREDICTION(EPS):
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


class CONST:
    """Rectified flow: x = sigma * noise + (1 - sigma) * latent, the network predicts the velocity."""

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
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        sigma = _per_item(sigma, latent.ndim)
        return latent / (1.0 - sigma)


class ModelSamplingDiscrete(torch.nn.Module):
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
            betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
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
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class ModelSamplingContinuousEDM(torch.nn.Module):
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
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(float(self.sigma_min))
        return math.exp((math.log(float(self.sigma_max)) - log_min) * (1.0 - percent) + log_min)


def time_snr_shift(alpha: float, t: Any) -> Any:
    """``t`` moved towards the noisy end by ``alpha`` (SD3's resolution-dependent shift)."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t: Any) -> Any:
    """Flux's exponential time shift of ``t`` by ``mu``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class ModelSamplingDiscreteFlow(torch.nn.Module):
    """Rectified-flow sigmas in (0, 1], shifted by ``shift`` (SD3 / AuraFlow style)."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        settings = _settings(model_config)
        self.set_parameters(
            shift=float(settings.get("shift", 1.0)), multiplier=settings.get("multiplier", 1000)
        )

    def set_parameters(self, shift: float = 1.0, timesteps: int = 1000, multiplier: float = 1000) -> None:
        self.shift = shift
        self.multiplier = multiplier
        ts = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)
        self.register_buffer("sigmas", ts)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

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


class ModelSamplingFlux(torch.nn.Module):
    """Flux's flow sigmas: ``flux_time_shift(shift, 1, t)`` over 10000 steps."""

    def __init__(self, model_config: Any = None) -> None:
        super().__init__()
        self.set_parameters(shift=float(_settings(model_config).get("shift", 1.15)))

    def set_parameters(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        self.shift = shift
        ts = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps)
        self.register_buffer("sigmas", ts)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

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
