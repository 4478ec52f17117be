"""`comfy.ldm.modules.diffusionmodules.openaimodel`: the UNet and its layers under the reference's names.

``forward_timestep_embed`` is read by the server's UNet blocks on every call, so a pack that
assigns its own version here runs our blocks through it from then on. ``apply_control`` adds the
next ControlNet residual, as the reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.core_nodes.models.unet import (
    Block,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
    apply_control,
    forward_timestep_embed,
)
from plugins.core_nodes.models.unet import timestep_embedding as timestep_embedding

# Some packs keep the original before replacing ``apply_control``; the same function.
original_apply_control = apply_control


class VideoResBlock(ResBlock):
    """The reference's video (SVD) residual block, by name for ``isinstance`` checks: this server
    builds no video models."""


class Timestep(nn.Module):
    """The sinusoidal embedding of timesteps as a module (``dim`` wide)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)

__all__ = [
    "Block",
    "Downsample",
    "ResBlock",
    "SpatialTransformer",
    "Timestep",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "VideoResBlock",
    "apply_control",
    "forward_timestep_embed",
    "original_apply_control",
    "timestep_embedding",
]
