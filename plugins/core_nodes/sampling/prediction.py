"""The model samplings the ModelSamplingDiscrete node installs: one schedule, one prediction type.

Each class is the core SD1/SDXL schedule (:class:`~plugins.core_nodes.sampling.schedules.ModelSamplingDiscrete`)
with another reading of the network output (``calculate_denoised``) or input scaling, so the
sampler and the UNet adapter use it unchanged through ``get_model_object("model_sampling")``.
``set_sigmas`` and the zero-terminal-SNR rescale give packs the reference's hooks on the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .schedules import ModelSamplingDiscrete, _per_item

# The value the reference pins the last alpha-bar to after the zero-terminal-SNR rescale (a true
# zero would make the top sigma infinite).
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08
# LCM distillation keeps 50 of the 1000 training timesteps.
LCM_ORIGINAL_TIMESTEPS = 50


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


class DiscreteSampling(ModelSamplingDiscrete):
    """The discrete schedule with eps prediction, a settable sigma table and optional zsnr."""

    def __init__(self, settings: Mapping[str, Any] | None = None, zsnr: bool = False) -> None:
        settings = dict(settings or {})
        start = float(settings.get("linear_start", 0.00085))
        end = float(settings.get("linear_end", 0.012))
        timesteps = int(settings.get("timesteps", 1000))
        super().__init__(linear_start=start, linear_end=end, timesteps=timesteps)
        if zsnr:
            # Rescaled in float64 before the float32 table, as the reference does.
            betas = torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            self.set_sigmas(rescale_zero_terminal_snr_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5))

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        """Replace the table (packs call this, e.g. to apply zsnr themselves)."""
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()


class VPredictionSampling(DiscreteSampling):
    """The network predicts v (SD2 768-v and v-pred finetunes)."""

    def __init__(self, settings: Mapping[str, Any] | None = None, zsnr: bool = False) -> None:
        super().__init__(settings, zsnr)
        self.prediction = "v"


class X0Sampling(DiscreteSampling):
    """The network predicts the clean latent itself."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        return model_output


class ImgToImgSampling(X0Sampling):
    """An image-to-image model: sees the latent unscaled and predicts the clean latent."""

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


class ImgToImgFlowSampling(ImgToImgSampling):
    """An image-to-image flow model (the reference's ``IMG_TO_IMG_FLOW``): sampling starts from
    the image itself, no noise mixed in, and the sampled latent comes back as ``1 - latent``
    (such models work on the inverted image)."""

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        return latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return 1.0 - latent


class LCMSampling(DiscreteSampling):
    """Latent-consistency models: 50 evenly spaced timesteps of the schedule, and the consistency
    boundary scalings (sigma_data 0.5, timestep scaled by 10) on the eps estimate."""

    def __init__(self, settings: Mapping[str, Any] | None = None, zsnr: bool = False) -> None:
        super().__init__(settings, zsnr=zsnr)  # zsnr rescales the full table, before the pick
        total = len(self.sigmas)
        self.skip_steps = total // LCM_ORIGINAL_TIMESTEPS
        # Every skip_steps-th entry, counted back from the last timestep, in ascending order.
        picked = [total - 1 - i * self.skip_steps for i in range(LCM_ORIGINAL_TIMESTEPS)][::-1]
        self.set_sigmas(self.sigmas[picked])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        index = super().timestep(sigma)
        return index * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return super().sigma((timestep.float() - (self.skip_steps - 1)) / self.skip_steps)

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        timestep = _per_item(self.timestep(sigma), model_output.ndim)
        x0 = x - model_output * _per_item(sigma, model_output.ndim)
        sigma_data = 0.5
        scaled = timestep * 10.0
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * x


SAMPLINGS: dict[str, type[DiscreteSampling]] = {
    "eps": DiscreteSampling,
    "v_prediction": VPredictionSampling,
    "lcm": LCMSampling,
    "x0": X0Sampling,
    "img_to_img": ImgToImgSampling,
    "img_to_img_flow": ImgToImgFlowSampling,
}


def make_sampling(kind: str, settings: Mapping[str, Any] | None = None, zsnr: bool = False) -> DiscreteSampling:
    """The model sampling for one of the node's ``sampling`` choices."""
    try:
        cls = SAMPLINGS[kind]
    except KeyError:
        raise ValueError(f"unknown sampling {kind!r}; expected one of {sorted(SAMPLINGS)}") from None
    return cls(settings, zsnr=zsnr)
