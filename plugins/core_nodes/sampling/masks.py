"""A LATENT's ``noise_mask`` brought to the latent's shape, as the samplers apply it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def prepare_mask(noise_mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``noise_mask`` (``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``) at latent size, one
    channel per latent channel and one item per batch item (cycled when it has fewer)."""
    mask = noise_mask.float().reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] < shape[0]:
        repeats = -(-shape[0] // mask.shape[0])
        mask = mask.repeat(repeats, 1, 1, 1)
    return mask[: shape[0]]


__all__ = ["prepare_mask"]
