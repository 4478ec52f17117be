"""Token merging for Stable Diffusion (ToMe, Bolya & Hoffman 2023, arXiv 2303.17604).

In the full-resolution self-attention layers a share ``ratio`` of the query tokens is merged into
similar ones before attention and copied back after it. The tokens are split into destinations
(one random token of every 2x2 cell) and sources (the rest); the ``r`` sources most similar (by
cosine) to a destination are averaged into it. An ``attn1_patch`` merges the queries, an
``attn1_output_patch`` unmerges the attention output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Merge = Callable[[torch.Tensor], torch.Tensor]
# Destination tokens are one per STRIDE x STRIDE cell; merging only at full resolution.
STRIDE = 2
MAX_DOWNSAMPLE = 1


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def bipartite_soft_matching(
    metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int, no_rand: bool = False
) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens ``metric`` ``[B, N, C]`` laid out ``h x w``: ``r`` source
    tokens merged (by mean) into their most similar destination. Destinations are drawn with
    torch's global generator, one per ``sy x sx`` cell (the top-left one with ``no_rand``)."""
    batch, tokens, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    with torch.no_grad():
        cells_y, cells_x = h // sy, w // sx
        if no_rand:
            chosen = torch.zeros(cells_y, cells_x, 1, device=metric.device, dtype=torch.int64)
        else:
            chosen = torch.randint(sy * sx, size=(cells_y, cells_x, 1), device=metric.device)
        # -1 marks each cell's destination, 0 a source; sorting puts destinations first.
        marks = torch.zeros(cells_y, cells_x, sy * sx, device=metric.device, dtype=torch.int64)
        marks.scatter_(dim=2, index=chosen, src=-torch.ones_like(chosen))
        marks = marks.view(cells_y, cells_x, sy, sx).transpose(1, 2).reshape(cells_y * sy, cells_x * sx)
        if cells_y * sy < h or cells_x * sx < w:
            # Rows / columns past the last whole cell are sources.
            full = torch.zeros(h, w, device=metric.device, dtype=torch.int64)
            full[: cells_y * sy, : cells_x * sx] = marks
            marks = full
        order = marks.reshape(1, -1, 1).argsort(dim=1)
        num_dst = cells_y * cells_x
        src_pos, dst_pos = order[:, num_dst:, :], order[:, :num_dst, :]

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = x.shape[-1]
            src = torch.gather(x, dim=1, index=src_pos.expand(batch, tokens - num_dst, c))
            dst = torch.gather(x, dim=1, index=dst_pos.expand(batch, num_dst, c))
            return src, dst

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(unit)
        similarity = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        best, best_dst = similarity.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept = ranked[..., r:, :]
        merged = ranked[..., :r, :]
        merged_dst = torch.gather(best_dst[..., None], dim=-2, index=merged)

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = split(x)
        n, t1, c = src.shape
        unmerged = torch.gather(src, dim=-2, index=kept.expand(n, t1 - r, c))
        src = torch.gather(src, dim=-2, index=merged.expand(n, r, c))
        dst = dst.scatter_reduce(-2, merged_dst.expand(n, r, c), src, reduce=mode)
        return torch.cat([unmerged, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        kept_len = kept.shape[1]
        unmerged, dst = x[..., :kept_len, :], x[..., kept_len:, :]
        c = unmerged.shape[-1]
        src = torch.gather(dst, dim=-2, index=merged_dst.expand(batch, r, c))
        out = torch.zeros(batch, tokens, c, device=x.device, dtype=x.dtype)
        src_of = src_pos.expand(batch, src_pos.shape[1], 1)
        out.scatter_(dim=-2, index=dst_pos.expand(batch, num_dst, c), src=dst)
        out.scatter_(dim=-2, index=torch.gather(src_of, dim=1, index=kept).expand(batch, kept_len, c), src=unmerged)
        out.scatter_(dim=-2, index=torch.gather(src_of, dim=1, index=merged).expand(batch, r, c), src=src)
        return out

    return merge, unmerge


def merge_functions(x: torch.Tensor, ratio: float, original_shape: list[int]) -> tuple[Merge, Merge]:
    """(merge, unmerge) for the tokens ``x`` of one layer: real ones at full resolution, the
    identity in the lower layers."""
    _, _, height, width = original_shape
    downsample = int(math.ceil(math.sqrt((height * width) // x.shape[1])))
    if downsample > MAX_DOWNSAMPLE:
        return _identity, _identity
    w = int(math.ceil(width / downsample))
    h = int(math.ceil(height / downsample))
    return bipartite_soft_matching(x, w, h, STRIDE, STRIDE, int(x.shape[1] * ratio))


class TokenMerging:
    """The two patches of one ToMe node, sharing the current layer's unmerge."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.unmerge: Merge = _identity

    def merge_queries(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Matched on the normed layer input (the queries' source), as the reference does.
        merge, self.unmerge = merge_functions(q, self.ratio, extra_options["original_shape"])
        return merge(q), k, v

    def unmerge_output(self, out: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        return self.unmerge(out)


__all__ = ["TokenMerging", "bipartite_soft_matching", "merge_functions"]
