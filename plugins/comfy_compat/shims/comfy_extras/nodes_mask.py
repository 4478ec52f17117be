"""``comfy_extras.nodes_mask``: ``composite`` (Impact-Pack calls it) and the module's node classes.

The node classes (``GrowMask``, ``FeatherMask``...) are the kernel's registered ones.
"""

from __future__ import annotations

import math

import torch
from comfy_extras._exports import module_attributes


def _to_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``tensor`` cut or cycled along its first axis to ``size`` items."""
    if tensor.shape[0] > size:
        return tensor[:size]
    if tensor.shape[0] < size:
        repeats = math.ceil(size / tensor.shape[0])
        return tensor.repeat(repeats, *([1] * (tensor.ndim - 1)))[:size]
    return tensor


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """Paste ``source`` onto ``destination`` (both ``[B, C, H, W]``, changed in place and returned).

    ``x``/``y`` are in units of ``multiplier`` pixels (8 for latents, 1 for images); ``mask`` (any
    size, resized to the source) blends source over destination; the part of the source outside
    the destination is dropped. A negative offset shifts the source out over the top/left edge.
    """
    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = _to_batch(source, destination.shape[0])
    height, width = source.shape[-2:]
    x = max(-width * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-height * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True).reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        mask = _to_batch(
            torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear"), source.shape[0]
        )
    # The overlap of the placed source with the destination, in source coordinates.
    sx0, sy0 = max(0, -left), max(0, -top)
    sx1, sy1 = min(width, destination.shape[-1] - left), min(height, destination.shape[-2] - top)
    if sx1 <= sx0 or sy1 <= sy0:
        return destination
    blend = mask[:, :, sy0:sy1, sx0:sx1]
    region = destination[:, :, top + sy0 : top + sy1, left + sx0 : left + sx1]
    destination[:, :, top + sy0 : top + sy1, left + sx0 : left + sx1] = (
        blend * source[:, :, sy0:sy1, sx0:sx1] + (1 - blend) * region
    )
    return destination


__getattr__, __dir__ = module_attributes(__name__, {"composite": composite})
