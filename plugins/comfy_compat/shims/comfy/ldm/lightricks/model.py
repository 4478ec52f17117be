"""``comfy.ldm.lightricks.model``: the layers and rotary-position maths of the LTX-Video transformer.

ComfyUI-LTXVideo builds its own blocks from ``CrossAttention`` / ``FeedForward`` /
``BasicTransformerBlock`` and the RoPE helpers, and subclasses ``LTXVModel``. The layers and
helpers are real here (the reference's constructors, parameter names and maths); the whole
models (``LTXBaseModel``, ``LTXVModel``) are not: comfykernel does not run LTX-Video models, and
building one raises :class:`~comfy.ldm._not_run.ModelFamilyNotRun`.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Any

import comfy.ldm.common_dit
import comfy.ldm.modules.attention
import comfy.ops
import numpy as np
import torch
from comfy.ldm._not_run import NotRunModel
from einops import rearrange
from torch import nn


def _ops(operations: Any) -> Any:
    return comfy.ops.disable_weight_init if operations is None else operations


class LTXRopeType(enum.StrEnum):
    """How the rotary embedding pairs dimensions: adjacent (interleaved) or halves (split).
    ``KEY`` is the model-config key it is read from, as in the reference."""

    INTERLEAVED = "interleaved"
    SPLIT = "split"
    KEY = "rope_type"

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any], default: Any = None) -> LTXRopeType:
        return cls(kwargs.get(cls.KEY, cls.INTERLEAVED if default is None else default))


class LTXFrequenciesPrecision(enum.StrEnum):
    """The precision the RoPE frequency grid is built in (``KEY``: its model-config key)."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"
    KEY = "frequencies_precision"

    @classmethod
    def from_dict(cls, kwargs: dict[str, Any], default: Any = None) -> LTXFrequenciesPrecision:
        return cls(kwargs.get(cls.KEY, cls.FLOAT32 if default is None else default))


def get_timestep_embedding(
    timesteps: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool = False, downscale_freq_shift: float = 1,
    scale: float = 1, max_period: int = 10000,
) -> torch.Tensor:  # fmt: skip
    """Sinusoidal ``[N, embedding_dim]`` embedding of 1-D ``timesteps`` (sines first unless
    ``flip_sin_to_cos``); frequencies ``max_period ** (-i / (half - downscale_freq_shift))``."""
    if timesteps.ndim != 1:
        raise ValueError("Timesteps should be a 1d-array")
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    args = scale * timesteps[:, None].float() * torch.exp(exponent / (half - downscale_freq_shift))[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class GELU_approx(nn.Module):  # noqa: N801 - the reference's class name
    """Linear then tanh-approximated GELU."""

    def __init__(self, dim_in: int, dim_out: int, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        self.proj = _ops(operations).Linear(dim_in, dim_out, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``dim`` -> ``dim * mult`` (GELU) -> ``dim_out``; ``glu`` is accepted and unused, as in the reference."""

    def __init__(
        self, dim: int, dim_out: int, mult: float = 4, glu: bool = False, dropout: float = 0.0, dtype: Any = None,
        device: Any = None, operations: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            GELU_approx(dim, inner, dtype=dtype, device=device, operations=operations),
            nn.Dropout(dropout),
            _ops(operations).Linear(inner, dim_out, dtype=dtype, device=device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def apply_interleaved_rotary_emb(input_tensor: torch.Tensor, cos_freqs: torch.Tensor, sin_freqs: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs: each ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``."""
    pairs = rearrange(input_tensor, "... (d r) -> ... d r", r=2)
    first, second = pairs.unbind(dim=-1)
    rotated = rearrange(torch.stack((-second, first), dim=-1), "... d r -> ... (d r)")
    return input_tensor * cos_freqs + rotated * sin_freqs


def apply_split_rotary_emb(input_tensor: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on halves: dimension ``i`` of the first half pairs with dimension ``i`` of the second.

    ``cos`` / ``sin`` may be per head (``[B, H, T, D/2]``) for a ``[B, T, H*D]`` input."""
    reshaped = input_tensor.ndim != 4 and cos.ndim == 4
    if reshaped:
        b, h, t, _ = cos.shape
        input_tensor = input_tensor.reshape(b, t, h, -1).swapaxes(1, 2)
    halves = rearrange(input_tensor, "... (d r) -> ... d r", d=2)
    first, second = halves[..., :1, :], halves[..., 1:, :]
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    out = torch.cat([first * c - second * s, second * c + first * s], dim=-2)
    out = rearrange(out, "... d r -> ... (d r)")
    return out.swapaxes(1, 2).reshape(b, t, -1) if reshaped else out


def apply_rotary_emb(input_tensor: torch.Tensor, freqs_cis: Any) -> torch.Tensor:
    """``freqs_cis`` is ``(cos, sin)`` or ``(cos, sin, split)``; split selects the halves layout."""
    split = freqs_cis[2] if len(freqs_cis) > 2 else False
    if split:
        return apply_split_rotary_emb(input_tensor, freqs_cis[0], freqs_cis[1])
    return apply_interleaved_rotary_emb(input_tensor, freqs_cis[0], freqs_cis[1])


class CrossAttention(nn.Module):
    """Attention with RMS-normed q / k (over all heads) and optional RoPE (``pe``, ``k_pe``)."""

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
        attn_precision: Any = None, dtype: Any = None, device: Any = None, operations: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        ops = _ops(operations)
        inner = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.attn_precision = attn_precision
        self.heads = heads
        self.dim_head = dim_head
        self.q_norm = ops.RMSNorm(inner, eps=1e-5, dtype=dtype, device=device)
        self.k_norm = ops.RMSNorm(inner, eps=1e-5, dtype=dtype, device=device)
        self.to_q = ops.Linear(query_dim, inner, bias=True, dtype=dtype, device=device)
        self.to_k = ops.Linear(context_dim, inner, bias=True, dtype=dtype, device=device)
        self.to_v = ops.Linear(context_dim, inner, bias=True, dtype=dtype, device=device)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, dtype=dtype, device=device), nn.Dropout(dropout))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None, pe: Any = None,
        k_pe: Any = None, transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        context = x if context is None else context
        q = self.q_norm(self.to_q(x))
        k = self.k_norm(self.to_k(context))
        v = self.to_v(context)
        if pe is not None:
            q = apply_rotary_emb(q, pe)
            k = apply_rotary_emb(k, pe if k_pe is None else k_pe)
        attention = comfy.ldm.modules.attention
        options = transformer_options or {}
        if mask is None:
            out = attention.optimized_attention(
                q, k, v, self.heads, attn_precision=self.attn_precision, transformer_options=options
            )
        else:
            out = attention.optimized_attention_masked(
                q, k, v, self.heads, mask, attn_precision=self.attn_precision, transformer_options=options
            )
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and feed-forward, with the timestep's six modulation
    vectors (shift / scale / gate for attention and MLP) added to ``scale_shift_table``."""

    def __init__(
        self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None, attn_precision: Any = None,
        dtype: Any = None, device: Any = None, operations: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.attn_precision = attn_precision
        common = {"attn_precision": attn_precision, "dtype": dtype, "device": device, "operations": operations}
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, context_dim=None, **common)
        self.ff = FeedForward(dim, dim_out=dim, glu=True, dtype=dtype, device=device, operations=operations)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, **common)
        self.scale_shift_table = nn.Parameter(torch.empty(6, dim, device=device, dtype=dtype))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None, pe: Any = None, transformer_options: dict[str, Any] | None = None,
        self_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        if timestep is None:
            raise ValueError("BasicTransformerBlock needs the timestep modulation")
        options = transformer_options or {}
        table = self.scale_shift_table[None, None].to(device=x.device, dtype=x.dtype)
        modulation = table + timestep.reshape(x.shape[0], timestep.shape[1], self.scale_shift_table.shape[0], -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(dim=2)
        normed = comfy.ldm.common_dit.rms_norm(x)
        x = x + self.attn1(normed * (1 + scale_msa) + shift_msa, pe=pe, mask=self_attention_mask, transformer_options=options) * gate_msa
        x = x + self.attn2(x, context=context, mask=attention_mask, transformer_options=options)
        normed = comfy.ldm.common_dit.rms_norm(x)
        return x + self.ff(normed * (1 + scale_mlp) + shift_mlp) * gate_mlp


def get_fractional_positions(indices_grid: torch.Tensor, max_pos: list[int]) -> torch.Tensor:
    """``[B, N, dims]`` positions as fractions of ``max_pos`` per dimension."""
    dims = indices_grid.shape[1]
    if dims != len(max_pos):
        raise ValueError(f"Number of position dimensions ({dims}) must match max_pos length ({len(max_pos)})")
    return torch.stack([indices_grid[:, i] / max_pos[i] for i in range(dims)], dim=-1)


@functools.lru_cache(maxsize=5)
def generate_freq_grid_np(
    positional_embedding_theta: float, positional_embedding_max_pos_count: int, inner_dim: int, _: Any = None
) -> torch.Tensor:
    """The RoPE frequencies ``theta ** linspace(0, 1, n) * pi / 2`` computed in float64
    (``n = inner_dim // (2 * position dims)``), returned as float32."""
    count = inner_dim // (2 * positional_embedding_max_pos_count)
    grid = np.power(positional_embedding_theta, np.linspace(0.0, 1.0, count, dtype=np.float64))
    return torch.tensor(grid * math.pi / 2, dtype=torch.float32)


def generate_freq_grid_pytorch(
    positional_embedding_theta: float, positional_embedding_max_pos_count: int, inner_dim: int, device: Any
) -> torch.Tensor:
    """:func:`generate_freq_grid_np` computed in float32 with torch."""
    count = inner_dim // (2 * positional_embedding_max_pos_count)
    exponents = torch.linspace(0.0, 1.0, count, device=device, dtype=torch.float32)
    return (positional_embedding_theta**exponents).to(torch.float32) * math.pi / 2


def generate_freqs(
    indices: torch.Tensor, indices_grid: torch.Tensor, max_pos: list[int], use_middle_indices_grid: bool
) -> torch.Tensor:
    """``[B, N, dims * len(indices)]`` rotation angles of each token (start / end grids are
    averaged with ``use_middle_indices_grid``, else the start is used)."""
    if use_middle_indices_grid:
        if indices_grid.ndim != 4 or indices_grid.shape[-1] != 2:
            raise ValueError("use_middle_indices_grid needs a [B, dims, N, 2] start / end grid")
        indices_grid = (indices_grid[..., 0] + indices_grid[..., 1]) / 2.0
    elif indices_grid.ndim == 4:
        indices_grid = indices_grid[..., 0]
    fractions = get_fractional_positions(indices_grid, max_pos)
    indices = indices.to(device=fractions.device)
    return (indices * (fractions.unsqueeze(-1) * 2 - 1)).transpose(-1, -2).flatten(2)


def interleaved_freqs_cis(freqs: torch.Tensor, pad_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) with each angle repeated for its pair, padded in front with identity rotations."""
    cos = freqs.cos().repeat_interleave(2, dim=-1)
    sin = freqs.sin().repeat_interleave(2, dim=-1)
    if pad_size:
        cos = torch.cat([torch.ones_like(cos[:, :, :pad_size]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[:, :, :pad_size]), sin], dim=-1)
    return cos, sin


def split_freqs_cis(freqs: torch.Tensor, pad_size: int, num_attention_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) per head, ``[B, H, T, D/2]``, padded in front with identity rotations."""
    cos, sin = freqs.cos(), freqs.sin()
    if pad_size:
        cos = torch.cat([torch.ones_like(cos[:, :, :pad_size]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[:, :, :pad_size]), sin], dim=-1)
    b, t, half = cos.shape
    per_head = half // num_attention_heads
    cos = cos.reshape(b, t, num_attention_heads, per_head).swapaxes(1, 2)
    sin = sin.reshape(b, t, num_attention_heads, per_head).swapaxes(1, 2)
    return cos, sin


class LTXBaseModel(NotRunModel):
    """The base of the LTX-Video transformers (not run by comfykernel)."""

    FAMILY = "LTX-Video (Lightricks)"


class LTXVModel(LTXBaseModel):
    """The LTX-Video transformer (not run by comfykernel)."""
