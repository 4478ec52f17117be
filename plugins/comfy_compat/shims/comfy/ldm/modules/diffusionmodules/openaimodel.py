"""`comfy.ldm.modules.diffusionmodules.openaimodel`: the UNet and its layers under the reference's names.

``forward_timestep_embed`` is read by the server's UNet blocks on every call, so a pack that
assigns its own version here runs our blocks through it from then on. ``apply_control`` adds the
next ControlNet residual, as the reference's.
"""

from __future__ import annotations

from plugins.core_nodes.models.unet import (
    Block,
    Downsample,
    ResBlock,
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

__all__ = [
    "Block",
    "Downsample",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "apply_control",
    "forward_timestep_embed",
    "original_apply_control",
    "timestep_embedding",
]
