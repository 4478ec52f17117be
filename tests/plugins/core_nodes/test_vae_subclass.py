"""Packs subclass the VAE class and set the reference's plain attributes themselves."""

from __future__ import annotations

import torch
from torch import nn

from plugins.core_nodes.models.adapters import Autoencoder


class PackVAE(Autoencoder):
    """Like ComfyUI_ExtraModels' EXVAE: no call to the base constructor, attributes assigned."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.offload_device = torch.device("cpu")
        self.vae_dtype = torch.float16
        self.first_stage_model = nn.Conv2d(3, 4, 1)

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        return samples_in


def test_assigned_attributes_win_and_computed_ones_remain() -> None:
    vae = PackVAE()
    assert vae.device == torch.device("cpu") and vae.vae_dtype is torch.float16
    assert isinstance(vae.first_stage_model, nn.Conv2d)
    patcher = vae.patcher  # built over the assigned network, without the base constructor's state
    assert patcher.model is vae.first_stage_model
    assert vae.working_dtypes == [torch.float16]
    del vae.vae_dtype
    assert vae.first_stage_model.weight.dtype == torch.float32
