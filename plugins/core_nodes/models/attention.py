"""Scaled dot-product attention in the reference's calling convention, and the one the UNet uses now.

Every function takes ``q`` ``[B, N, heads * dim]`` and ``k`` / ``v`` ``[B, M, heads * dim]`` (with
``skip_reshape``: ``[B, heads, N, dim]`` already) and gives ``[B, N, heads * dim]`` (with
``skip_output_reshape``: ``[B, heads, N, dim]``). ``mask`` is boolean (True takes part) or
additive, ``[N, M]``, ``[B, N, M]`` or ``[B, heads, N, M]``.

The UNet's attention layers call :func:`current` on every call: a pack may assign its own function
to ``comfy.ldm.modules.attention.optimized_attention`` (the compatibility module) and from then on
our attention runs through it; without the compatibility layer it is :func:`attention_pytorch`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from plugins.core_nodes import patchpoints

AttentionFunction = Callable[..., torch.Tensor]
COMPAT_MODULE = "comfy.ldm.modules.attention"


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    b = t.shape[0]
    return t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)


def _mask(mask: torch.Tensor | None, batch: int, heads: int) -> torch.Tensor | None:
    """The mask broadcast to ``[B, heads, N, M]`` (or left as is when it already has four dims)."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        if mask.shape[0] not in (1, batch) and mask.shape[0] == batch * heads:
            return mask.reshape(batch, heads, *mask.shape[1:])
        mask = mask.unsqueeze(1)
    return mask


def _prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, skip_reshape: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if skip_reshape:
        return q, k, v
    return _heads_first(q, heads), _heads_first(k, heads), _heads_first(v, heads)


def _finish(out: torch.Tensor, skip_output_reshape: bool) -> torch.Tensor:
    if skip_output_reshape:
        return out
    b, heads, n, dim = out.shape
    return out.transpose(1, 2).reshape(b, n, heads * dim)


def attention_pytorch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Attention through ``torch.nn.functional.scaled_dot_product_attention`` (the UNet's default)."""
    q, k, v = _prepare(q, k, v, heads, skip_reshape)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(mask, q.shape[0], heads))
    return _finish(out, skip_output_reshape)


def attention_basic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Attention written out (softmax of ``q k^T / sqrt(dim)``), in float32 when asked or for half inputs."""
    q, k, v = _prepare(q, k, v, heads, skip_reshape)
    dtype = v.dtype
    if attn_precision == torch.float32 or q.dtype in (torch.float16, torch.bfloat16):
        q, k = q.float(), k.float()
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    mask = _mask(mask, q.shape[0], heads)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    out = scores.softmax(dim=-1).to(dtype) @ v
    return _finish(out, skip_output_reshape)


def attention_split(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The reference's memory-splitting variant; here the same numbers as :func:`attention_pytorch`."""
    return attention_pytorch(*args, **kwargs)


def attention_sub_quad(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The reference's sub-quadratic variant; here the same numbers as :func:`attention_pytorch`."""
    return attention_pytorch(*args, **kwargs)


def current() -> AttentionFunction:
    """The attention function the UNet uses now (a pack's replacement, or :func:`attention_pytorch`)."""
    return patchpoints.lookup(COMPAT_MODULE, "optimized_attention", attention_pytorch)


def current_masked() -> AttentionFunction:
    """The attention function for masked calls (the reference keeps a second slot for them)."""
    return patchpoints.lookup(COMPAT_MODULE, "optimized_attention_masked", attention_pytorch)


__all__ = [
    "AttentionFunction",
    "attention_basic",
    "attention_pytorch",
    "attention_split",
    "attention_sub_quad",
    "current",
    "current_masked",
]
