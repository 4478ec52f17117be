"""FreeU (Si et al. 2023, arXiv 2309.11497): on the decoder's way up, the backbone features are
amplified and the skip connection's low frequencies damped, at the two widths where the paper
applies it (4x and 2x the model's base channel count).

The patch is an ``output_block_patch`` ``(h, hsp, transformer_options) -> (h, hsp)``: ``h`` the
backbone features entering an output block, ``hsp`` the skip features concatenated to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from plugins.core_nodes.patches.frequency import scale_frequencies

log = logging.getLogger("comfykernel.core_nodes")
OutputBlockPatch = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
# FreeU's skip filter damps the centred 2x2 box of the spectrum (the lowest frequencies).
SKIP_FILTER_HALF_WIDTH = 1


def skip_filter(hsp: torch.Tensor, scale: float, cpu_only: set[torch.device]) -> torch.Tensor:
    """``hsp`` with its lowest frequencies scaled by ``scale``; on a device without FFT kernels
    (remembered in ``cpu_only``) the filter runs on the CPU."""
    t = SKIP_FILTER_HALF_WIDTH
    if hsp.device not in cpu_only:
        try:
            return scale_frequencies(hsp, scale, 1.0, t, t)
        except RuntimeError:
            log.warning("FreeU: device %s has no FFT support; filtering on the CPU", hsp.device)
            cpu_only.add(hsp.device)
    return scale_frequencies(hsp.cpu(), scale, 1.0, t, t).to(hsp.device)


def _scale_half(h: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``h`` with its first half of channels multiplied by ``factor``."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, v2: bool) -> OutputBlockPatch:
    """FreeU's output block patch. Version 1 multiplies half of the backbone channels by ``b``;
    version 2 by ``1 + (b - 1) * m``, ``m`` the channel-mean feature map min-max normalised per
    item (so the boost follows where the features are strong)."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}
    cpu_only: set[torch.device] = set()

    def output_block_patch(
        h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, hsp
        b, s = scale
        if v2:
            mean = h.mean(1, keepdim=True)
            flat = mean.reshape(mean.shape[0], -1)
            low = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
            high = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
            h = _scale_half(h, (b - 1) * ((mean - low) / (high - low)) + 1)
        else:
            h = _scale_half(h, b)
        return h, skip_filter(hsp, s, cpu_only)

    return output_block_patch


__all__ = ["freeu_patch", "skip_filter"]
