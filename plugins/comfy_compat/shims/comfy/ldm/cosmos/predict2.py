"""``comfy.ldm.cosmos.predict2``: the layers of NVIDIA's Cosmos-Predict2 transformer.

comfyui-tooling-nodes walks a Cosmos model for ``Attention`` blocks and patches their
``forward`` with its own, which calls ``compute_qkv`` and ``compute_attention``; those layers are
real here (same constructor, parameter names and maths as the reference's), so such patches
work on them. The whole model (``MiniTrainDIT``) is not: comfykernel does not run Cosmos models,
and building one raises :class:`~comfy.ldm._not_run.ModelFamilyNotRun`.
"""

from __future__ import annotations

import math
from typing import Any

import comfy.ldm.modules.attention
import comfy.ops
import torch
from comfy.ldm._not_run import NotRunModel
from einops import rearrange
from torch import nn


def _ops(operations: Any) -> Any:
    return comfy.ops.disable_weight_init if operations is None else operations


def apply_rotary_pos_emb(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``t`` ``[..., D]`` by ``freqs`` ``[..., D/2, 2, 2]`` (rotation matrices per pair).

    The last dimension is read as two halves (first half: the pairs' first components).
    """
    pairs = t.reshape(*t.shape[:-1], 2, -1).movedim(-2, -1).unsqueeze(-2).float()
    rotated = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return rotated.movedim(-1, -2).reshape(*t.shape).type_as(t)


class GPT2FeedForward(nn.Module):
    """Linear -> GELU -> Linear, without biases."""

    def __init__(self, d_model: int, d_ff: int, device: Any = None, dtype: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.activation = nn.GELU()
        self.layer1 = ops.Linear(d_model, d_ff, bias=False, device=device, dtype=dtype)
        self.layer2 = ops.Linear(d_ff, d_model, bias=False, device=device, dtype=dtype)
        self._layer_id = None
        self._dim = d_model
        self._hidden_dim = d_ff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.activation(self.layer1(x)))


def torch_attention_op(
    q_B_S_H_D: torch.Tensor,  # noqa: N803 - the reference's names
    k_B_S_H_D: torch.Tensor,  # noqa: N803
    v_B_S_H_D: torch.Tensor,  # noqa: N803
    transformer_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Attention over ``[B, S, H, D]`` inputs; ``[B, S, H * D]`` out (through the swappable
    ``comfy.ldm.modules.attention.optimized_attention``)."""
    heads = q_B_S_H_D.shape[-2]
    q, k, v = (t.movedim(-2, 1).reshape(t.shape[0], heads, -1, t.shape[-1]) for t in (q_B_S_H_D, k_B_S_H_D, v_B_S_H_D))
    return comfy.ldm.modules.attention.optimized_attention(
        q, k, v, heads, skip_reshape=True, transformer_options=transformer_options or {}
    )


class Attention(nn.Module):
    """Multi-head self- (``context_dim`` None) or cross-attention with per-head RMS-normed q / k
    and rotary position embedding on self-attention."""

    def __init__(
        self, query_dim: int, context_dim: int | None = None, n_heads: int = 8, head_dim: int = 64,
        dropout: float = 0.0, device: Any = None, dtype: Any = None, operations: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        ops = _ops(operations)
        self.is_selfattn = context_dim is None
        context_dim = query_dim if context_dim is None else context_dim
        inner_dim = head_dim * n_heads
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.query_dim = query_dim
        self.context_dim = context_dim
        self.q_proj = ops.Linear(query_dim, inner_dim, bias=False, device=device, dtype=dtype)
        self.q_norm = ops.RMSNorm(head_dim, eps=1e-6, device=device, dtype=dtype)
        self.k_proj = ops.Linear(context_dim, inner_dim, bias=False, device=device, dtype=dtype)
        self.k_norm = ops.RMSNorm(head_dim, eps=1e-6, device=device, dtype=dtype)
        self.v_proj = ops.Linear(context_dim, inner_dim, bias=False, device=device, dtype=dtype)
        self.v_norm = nn.Identity()
        self.output_proj = ops.Linear(inner_dim, query_dim, bias=False, device=device, dtype=dtype)
        self.output_dropout: nn.Module = nn.Dropout(dropout) if dropout > 1e-4 else nn.Identity()
        self.attn_op = torch_attention_op
        self._query_dim = query_dim
        self._context_dim = context_dim
        self._inner_dim = inner_dim

    def compute_qkv(
        self, x: torch.Tensor, context: torch.Tensor | None = None, rope_emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, S, H, D]``, normed (and rotated, for self-attention)."""
        context = x if context is None else context
        q, k, v = (
            rearrange(t, "b ... (h d) -> b ... h d", h=self.n_heads, d=self.head_dim)
            for t in (self.q_proj(x), self.k_proj(context), self.v_proj(context))
        )
        q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        if self.is_selfattn and rope_emb is not None:
            q = apply_rotary_pos_emb(q, rope_emb)
            k = apply_rotary_pos_emb(k, rope_emb)
        return q, k, v

    def compute_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transformer_options: dict[str, Any] | None = None
    ) -> torch.Tensor:
        result = self.attn_op(q, k, v, transformer_options=transformer_options or {})
        return self.output_dropout(self.output_proj(result))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, rope_emb: torch.Tensor | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        q, k, v = self.compute_qkv(x, context, rope_emb=rope_emb)
        return self.compute_attention(q, k, v, transformer_options=transformer_options)


class Timesteps(nn.Module):
    """Sinusoidal embedding (cosines first) of ``[B, T]`` timesteps: ``[B, T, num_channels]``."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps_B_T: torch.Tensor) -> torch.Tensor:  # noqa: N803 - the reference's name
        if timesteps_B_T.ndim != 2:
            raise ValueError(f"Timesteps expects a [B, T] tensor, got {timesteps_B_T.ndim} dimensions")
        flat = timesteps_B_T.flatten().float()
        half = self.num_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=flat.device) / half)
        args = flat[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return emb.reshape(timesteps_B_T.shape[0], timesteps_B_T.shape[1], -1)


class MiniTrainDIT(NotRunModel):
    """The Cosmos-Predict2 diffusion transformer (not run by comfykernel)."""

    FAMILY = "Cosmos (Predict2)"
