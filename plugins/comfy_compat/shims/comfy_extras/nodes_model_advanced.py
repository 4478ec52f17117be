"""``comfy_extras.nodes_model_advanced``: the sampling-type helpers packs build model samplings from.

``LCM``, ``X0``, ``ModelSamplingDiscreteDistilled`` and ``rescale_zero_terminal_snr_sigmas`` are
defined here (AnimateDiff-Evolved subclasses them); the node classes of the reference module
come from the kernel's registry when it has them.
"""

from __future__ import annotations

import comfy.model_sampling
import torch
from comfy.model_sampling import rescale_zero_terminal_snr_sigmas
from comfy_extras._exports import module_attributes


def _per_item(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(values.shape[:1] + (1,) * (ndim - 1))


class LCM(comfy.model_sampling.EPS):
    """Latent-consistency output: the EPS estimate blended with the input by the boundary scalings."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        ndim = model_output.ndim
        timestep = _per_item(self.timestep(sigma), ndim)  # type: ignore[attr-defined]
        x0 = model_input - model_output * _per_item(sigma, ndim)
        sigma_data = 0.5
        scaled = timestep * 10.0  # the LCM timestep scaling
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * model_input


class X0(comfy.model_sampling.EPS):
    """The network predicts the clean latent itself."""

    def calculate_denoised(
        self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        return model_output


class ModelSamplingDiscreteDistilled(comfy.model_sampling.ModelSamplingDiscrete):
    """The discrete schedule cut to ``original_timesteps`` evenly spaced steps (LCM-style distillation)."""

    original_timesteps = 50

    def __init__(self, model_config: object = None, zsnr: bool | None = None) -> None:
        super().__init__(model_config, zsnr=zsnr)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        # Every skip_steps-th sigma, counted back from the last timestep.
        picked = [self.num_timesteps - 1 - i * self.skip_steps for i in range(self.original_timesteps)]
        self.set_sigmas(self.sigmas[list(reversed(picked))].to(torch.float32))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = distances.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        position = (timestep.float().to(self.log_sigmas.device) - (self.skip_steps - 1)) / self.skip_steps
        t = torch.clamp(position.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)


__getattr__, __dir__ = module_attributes(
    __name__,
    {
        "LCM": LCM,
        "X0": X0,
        "ModelSamplingDiscreteDistilled": ModelSamplingDiscreteDistilled,
        "rescale_zero_terminal_snr_sigmas": rescale_zero_terminal_snr_sigmas,
    },
)
