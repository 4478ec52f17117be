"""``comfy.ldm.common_dit``: helpers shared by the reference's transformer (DiT) models."""

from __future__ import annotations

from collections.abc import Sequence

import comfy.model_management
import torch


def pad_to_patch_size(img: torch.Tensor, patch_size: Sequence[int] = (2, 2), padding_mode: str = "circular") -> torch.Tensor:
    """Pad the spatial dimensions at their end up to multiples of ``patch_size``."""
    if padding_mode == "circular" and (torch.jit.is_tracing() or torch.jit.is_scripting()):
        padding_mode = "reflect"
    pad: tuple[int, ...] = ()
    for i in range(img.ndim - 2):
        # F.pad lists the last dimension first.
        pad = (0, (patch_size[i] - img.shape[i + 2] % patch_size[i]) % patch_size[i]) + pad
    return torch.nn.functional.pad(img, pad, mode=padding_mode)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise the last dimension, scaled by ``weight`` (cast to ``x``) when given."""
    if weight is None:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=eps)
    weight = comfy.model_management.cast_to(weight, dtype=x.dtype, device=x.device)
    return torch.nn.functional.rms_norm(x, weight.shape, weight=weight, eps=eps)
