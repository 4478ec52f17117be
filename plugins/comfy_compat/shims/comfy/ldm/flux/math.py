"""``comfy.ldm.flux.math``: Flux's rotary position embedding and attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices ``[..., n, dim/2, 2, 2]`` for positions ``pos`` (float32)."""
    if dim % 2:
        raise ValueError("rope needs an even dimension")
    device = torch.device("cpu") if pos.device.type == "mps" else pos.device  # no float64 on MPS
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=device)
    omega = 1.0 / (theta**scale)
    angles = torch.einsum("...n,d->...nd", pos.to(dtype=torch.float32, device=device), omega)
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).to(dtype=torch.float32, device=pos.device)


def apply_rope1(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate consecutive feature pairs of ``x`` by ``freqs_cis`` (from :func:`rope`)."""
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    if pairs.shape[2] != 1 and freqs_cis.shape[2] != 1 and pairs.shape[2] != freqs_cis.shape[2]:
        freqs_cis = freqs_cis[:, :, : pairs.shape[2]]
    out = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def apply_rope(xq: Tensor, xk: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
    return apply_rope1(xq, freqs_cis), apply_rope1(xk, freqs_cis)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor | None, mask: Tensor | None = None, transformer_options: Any = None) -> Tensor:
    """Attention over ``[B, heads, tokens, head_dim]`` inputs (rope applied first), returned as
    ``[B, tokens, heads * head_dim]``."""
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)
