"""Latent formats of the 16-channel families (Flux, SD3): a scale and a shift per family.

The diffusion model sees ``(vae_latent - shift) * scale`` and gives back latents read as
``latent / scale + shift`` (the reference's ``SD3`` / ``Flux`` formats). The RGB factors are the
reference's linear latent -> RGB fits used for previews.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugins.core_nodes.contracts import LatentFormat

if TYPE_CHECKING:
    import torch

__all__ = ["FLUX", "SD3", "ShiftedLatentFormat", "latent_format_for_channels"]


@dataclass(frozen=True)
class ShiftedLatentFormat(LatentFormat):
    """A latent format with a shift applied before the scale."""

    shift_factor: float = 0.0

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


SD3 = ShiftedLatentFormat(
    name="SD3",
    channels=16,
    scale_factor=1.5305,
    shift_factor=0.0609,
    rgb_factors=(
        (-0.0922, -0.0175, 0.0749),
        (0.0311, 0.0633, 0.0954),
        (0.1994, 0.0927, 0.0458),
        (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496),
        (-0.0006, 0.1104, 0.0309),
        (0.0978, 0.0306, 0.0427),
        (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669),
        (-0.0488, 0.0130, -0.0268),
        (0.0922, 0.0988, 0.0951),
        (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895),
        (-0.0069, -0.0030, -0.0810),
        (-0.0596, -0.0465, -0.0293),
        (-0.1448, -0.1463, -0.1189),
    ),
    rgb_bias=(0.2394, 0.2135, 0.1925),
)

FLUX = ShiftedLatentFormat(
    name="Flux",
    channels=16,
    scale_factor=0.3611,
    shift_factor=0.1159,
    rgb_factors=(
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    rgb_bias=(-0.0329, -0.0718, -0.0851),
)

FAMILY_FORMATS: dict[str, LatentFormat] = {"flux": FLUX, "sd3": SD3}


def latent_format_for_channels(channels: int) -> LatentFormat | None:
    """A standalone VAE's preview format by its latent width: 16 channels read as Flux's (the
    more common of the two), None for the 4-channel VAEs (the caller's default)."""
    return FLUX if channels == 16 else None
