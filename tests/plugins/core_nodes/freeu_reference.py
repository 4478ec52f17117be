"""FreeU written out for the tests: the UNet's block loop with the backbone and skip scaling of
Si et al. 2023 (eqs. 2-6), independent of the patch under test."""

from __future__ import annotations

from typing import Any

import torch

from plugins.core_nodes.models.unet import UNetModel, timestep_embedding


def low_frequencies_scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    """FreeU's skip filter as a plain DFT (float64): the signed frequencies -1 and 0 on both axes
    (the centred 2x2 box of the shifted spectrum) times ``scale``."""
    h, w = t.shape[-2:]
    fy, fx = torch.fft.fftfreq(h) * h, torch.fft.fftfreq(w) * w
    low = ((fy >= -1) & (fy < 1))[:, None] & ((fx >= -1) & (fx < 1))[None, :]
    mask = torch.where(low, torch.tensor(scale, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    return torch.fft.ifft2(torch.fft.fft2(t.double()) * mask).real.float()


def freeu_forward(unet: UNetModel, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
                  b1: float, b2: float, s1: float, s2: float, v2: bool) -> torch.Tensor:  # fmt: skip
    """``unet`` with FreeU where the backbone enters an output block at 4 (b1, s1) or 2 (b2, s2)
    times the base width: half its channels times b (v2: times 1 + (b - 1) * the channel-mean map
    min-max normalised per item), the skip's lowest frequencies times s."""
    mc = unet.config.model_channels
    emb = unet.time_embed(timestep_embedding(t, mc))
    h, skips = x, []
    for block in unet.input_blocks:
        h = block(h, emb, ctx, {})
        skips.append(h)
    h = unet.middle_block(h, emb, ctx, {})
    for block in unet.output_blocks:
        skip = skips.pop()
        width = h.shape[1]
        if width in (4 * mc, 2 * mc):
            b, s = (b1, s1) if width == 4 * mc else (b2, s2)
            factor: Any = b
            if v2:
                m = h.mean(1, keepdim=True)
                lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
                factor = 1 + (b - 1) * (m - lo) / (hi - lo)
            h = h.clone()
            h[:, : width // 2] = h[:, : width // 2] * factor
            skip = low_frequencies_scaled(skip, s)
        h = block(torch.cat([h, skip], 1), emb, ctx, {}, skips[-1].shape if skips else None)
    return unet.out(h)
