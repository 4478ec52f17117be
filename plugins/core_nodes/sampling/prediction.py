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

from .model_sampling import (
    IMG_TO_IMG,
    IMG_TO_IMG_FLOW,
    X0,
    ZSNR_LAST_ALPHA_BAR,
    _per_item,
    betas_to_sigmas,
    linear_betas,
    rescale_zero_terminal_snr_sigmas,
)
from .schedules import ModelSamplingDiscrete

__all__ = [
    "LCM_ORIGINAL_TIMESTEPS",
    "SAMPLINGS",
    "ZSNR_LAST_ALPHA_BAR",
    "DiscreteSampling",
    "ImgToImgFlowSampling",
    "ImgToImgSampling",
    "LCMSampling",
    "VPredictionSampling",
    "X0Sampling",
    "make_sampling",
    "rescale_zero_terminal_snr_sigmas",
]

# LCM distillation keeps 50 of the 1000 training timesteps.
LCM_ORIGINAL_TIMESTEPS = 50


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
            self.set_sigmas(rescale_zero_terminal_snr_sigmas(betas_to_sigmas(linear_betas(start, end, timesteps))))

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        """Replace the table (packs call this, e.g. to apply zsnr themselves)."""
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()


class VPredictionSampling(DiscreteSampling):
    """The network predicts v (SD2 768-v and v-pred finetunes)."""

    def __init__(self, settings: Mapping[str, Any] | None = None, zsnr: bool = False) -> None:
        super().__init__(settings, zsnr)
        self.prediction = "v"


# The other readings are the model samplings' prediction types mixed into the discrete schedule,
# as the reference composes them.
class X0Sampling(X0, DiscreteSampling):
    """The network predicts the clean latent itself."""


class ImgToImgSampling(IMG_TO_IMG, X0Sampling):
    """An image-to-image model: sees the latent unscaled and predicts the clean latent."""


class ImgToImgFlowSampling(IMG_TO_IMG_FLOW, ImgToImgSampling):
    """An image-to-image flow model (the reference's ``IMG_TO_IMG_FLOW``): sampling starts from
    the image itself, no noise mixed in, and the sampled latent comes back as ``1 - latent``
    (such models work on the inverted image)."""


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
