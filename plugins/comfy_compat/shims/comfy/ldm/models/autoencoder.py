"""``comfy.ldm.models.autoencoder``: the KL autoencoder (VAE) network class.

``AutoencoderKL`` is the core nodes' VAE network class (the module inside every VAE this server
loads), so packs' ``isinstance`` / ``type(...) in`` checks on VAE networks answer as in the
reference.
"""

from __future__ import annotations

import torch

from plugins.core_nodes.models.vae import AutoencoderKL


class DiagonalGaussianRegularizer(torch.nn.Module):
    """Splits ``[mean, logvar]`` channels and samples (or takes the mean) — the VAE bottleneck."""

    def __init__(self, sample: bool = False) -> None:
        super().__init__()
        self.sample = sample

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = torch.chunk(z, 2, dim=1)
        if not self.sample:
            return mean, {}
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean + std * torch.randn_like(mean), {}


__all__ = ["AutoencoderKL", "DiagonalGaussianRegularizer"]
