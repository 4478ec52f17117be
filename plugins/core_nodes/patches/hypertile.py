"""HyperTile (tfernd/HyperTile): self-attention of the full-resolution (and, with ``max_depth``,
the next lower) layers computed per tile of the queries, which is much cheaper on large images.

Two patches share the tiling of the current layer: an ``attn1_patch`` that cuts the queries into
``nh x nw`` tiles (a random choice among the ``swap_size`` largest tile counts whose tiles are at
least ``tile_size`` pixels) and an ``attn1_output_patch`` that puts the tiles back together.

The tiles are cut from the token sequence read as ``(nh, h, nw, w)`` with ``h x w`` the layer's
grid as the reference computes it (width first for a non-square latent). Keys and values are
split into as many consecutive token runs as there are query tiles, one run per tile: that is
what the reference's attention does with them (it reshapes them to the queries' batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Tiles are given in pixels; the UNet sees latents 8 times smaller, and no tile under 32 pixels.
LATENT_SCALE = 8
MIN_TILE = 32


def random_divisor(value: int, min_value: int, max_options: int = 1) -> int:
    """``value // d`` for a divisor ``d >= min_value`` of ``value``, chosen with torch's global
    generator among the ``max_options`` smallest such ``d`` (the last of them is never drawn:
    the reference's ``randint`` upper bound is exclusive)."""
    min_value = min(min_value, value)
    divisors = [d for d in range(min_value, value + 1) if value % d == 0]
    counts = [value // d for d in divisors[:max_options]]
    index = int(torch.randint(low=0, high=len(counts) - 1, size=(1,)).item()) if len(counts) > 1 else 0
    return counts[index]


def tile_tokens(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    """``[B, nh*h*nw*w, C]`` (tokens read as ``(nh, h, nw, w)``) -> ``[B*nh*nw, h*w, C]``."""
    b, _, c = x.shape
    return x.reshape(b, nh, h, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, h * w, c)


def untile_tokens(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`tile_tokens`."""
    c = x.shape[-1]
    b = x.shape[0] // (nh * nw)
    return x.reshape(b, nh, nw, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * h * nw * w, c)


class HyperTile:
    """The two patches of one HyperTile node (:meth:`split` and :meth:`join`)."""

    def __init__(self, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool) -> None:
        self.latent_tile = max(MIN_TILE, tile_size) // LATENT_SCALE
        self.swap_size = swap_size
        self.max_depth = max_depth
        self.scale_depth = scale_depth
        self.pending: tuple[int, int, int, int] | None = None

    def split(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = q.shape[-2]
        shape = extra_options["original_shape"]
        sizes = [(shape[-2] / 2**i) * (shape[-1] / 2**i) for i in range(self.max_depth + 1)]
        if tokens not in sizes:
            return q, k, v
        aspect = shape[-1] / shape[-2]
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** sizes.index(tokens) if self.scale_depth else 1
        nh = random_divisor(h, self.latent_tile * factor, self.swap_size)
        nw = random_divisor(w, self.latent_tile * factor, self.swap_size)
        if nh * nw <= 1:
            return q, k, v
        self.pending = (nh, nw, h // nh, w // nw)
        tiles = nh * nw
        q = tile_tokens(q, nh, nw, h // nh, w // nw)
        k = k.reshape(k.shape[0] * tiles, -1, k.shape[-1])
        v = v.reshape(v.shape[0] * tiles, -1, v.shape[-1])
        return q, k, v

    def join(self, out: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        if self.pending is None:
            return out
        nh, nw, h, w = self.pending
        self.pending = None
        return untile_tokens(out, nh, nw, h, w)


__all__ = ["HyperTile", "random_divisor", "tile_tokens", "untile_tokens"]
