"""Scaling a feature map's spatial frequencies (FreeU's skip filter, FreSca's guidance filter)."""

from __future__ import annotations

import torch


def scale_frequencies(
    x: torch.Tensor, inner: float, outer: float, half_height: int, half_width: int
) -> torch.Tensor:
    """``x`` ``[..., H, W]`` with its centred 2-D spectrum multiplied by ``inner`` inside the box
    ``[H//2 - half_height, H//2 + half_height) x [W//2 - half_width, W//2 + half_width)`` (Python
    slice bounds, so a negative start wraps as it does for the reference's masks) and by
    ``outer`` elsewhere. Computed in float32 (FFTs in half precision lose the low bands) and
    returned in ``x``'s dtype."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    cy, cx = height // 2, width // 2
    mask = torch.full(spectrum.shape, float(outer), device=x.device)
    mask[..., cy - half_height : cy + half_height, cx - half_width : cx + half_width] = float(inner)
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


__all__ = ["scale_frequencies"]
