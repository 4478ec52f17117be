"""``comfy.ldm.flux.layers``: the building blocks of the Flux transformer.

Same constructor signatures, parameter names and maths as the reference's blocks (double-stream
blocks attend jointly over text then image tokens; single-stream blocks run attention and MLP in
parallel), so packs that build their own Flux variants from them (x-flux, Easy-Use) get
compatible modules. ``transformer_options["patches"]`` ``attn1_patch`` / ``attn1_output_patch``
entries are honoured. This server does not load Flux checkpoints itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import comfy.ops
import torch
from comfy.ldm.flux.math import attention, rope
from torch import Tensor, nn

# Some packs import this name from here; the reference keeps it as None.
RMSNorm = None


def _ops(operations: Any) -> Any:
    return comfy.ops.disable_weight_init if operations is None else operations


class EmbedND(nn.Module):
    """Rotary embeddings for N-dimensional position ids ``[B, tokens, N]``."""

    def __init__(self, dim: int, theta: int, axes_dim: Sequence[int]) -> None:
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        parts = [rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(parts, dim=-3).unsqueeze(1)


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embeddings ``[N, dim]`` (cosines then sines) of ``time_factor * t``."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t) if torch.is_floating_point(t) else emb


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, bias: bool = True, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.in_layer = ops.Linear(in_dim, hidden_dim, bias=bias, dtype=dtype, device=device)
        self.silu = nn.SiLU()
        self.out_layer = ops.Linear(hidden_dim, hidden_dim, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    def __init__(self, dim: int, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.query_norm = ops.RMSNorm(dim, dtype=dtype, device=device)
        self.key_norm = ops.RMSNorm(dim, dtype=dtype, device=device)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.num_heads = num_heads
        self.qkv = ops.Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, device=device)
        self.norm = QKNorm(dim // num_heads, dtype=dtype, device=device, operations=ops)
        self.proj = ops.Linear(dim, dim, bias=proj_bias, dtype=dtype, device=device)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    """Shift / scale / gate vectors (two sets when ``double``) from the conditioning vector."""

    def __init__(self, dim: int, double: bool, bias: bool = True, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = _ops(operations).Linear(dim, self.multiplier * dim, bias=bias, dtype=dtype, device=device)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        if vec.ndim == 2:
            vec = vec[:, None, :]
        out = self.lin(nn.functional.silu(vec)).chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


def apply_mod(tensor: Tensor, m_mult: Tensor, m_add: Tensor | None = None, modulation_dims: Any = None) -> Tensor:
    """``tensor * m_mult + m_add``; with ``modulation_dims`` [(start, end, index)...] each token
    range uses its own modulation row (in place)."""
    if modulation_dims is None:
        return torch.addcmul(m_add, tensor, m_mult) if m_add is not None else tensor * m_mult
    for start, end, index in modulation_dims:
        tensor[:, start:end] *= m_mult[:, index : index + 1]
        if m_add is not None:
            tensor[:, start:end] += m_add[:, index : index + 1]
    return tensor


class SiLUActivation(nn.Module):
    """SwiGLU-style gate: ``silu(first half) * second half``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_fn = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return self.gate_fn(a) * b


class YakMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.gate_proj = ops.Linear(hidden_size, intermediate_size, bias=True, dtype=dtype, device=device)
        self.up_proj = ops.Linear(hidden_size, intermediate_size, bias=True, dtype=dtype, device=device)
        self.down_proj = ops.Linear(intermediate_size, hidden_size, bias=True, dtype=dtype, device=device)
        self.act_fn = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def build_mlp(hidden_size: int, mlp_hidden_dim: int, mlp_silu_act: bool = False, yak_mlp: bool = False, dtype: Any = None, device: Any = None, operations: Any = None) -> nn.Module:
    ops = _ops(operations)
    if yak_mlp:
        return YakMLP(hidden_size, mlp_hidden_dim, dtype=dtype, device=device, operations=ops)
    if mlp_silu_act:
        return nn.Sequential(
            ops.Linear(hidden_size, mlp_hidden_dim * 2, bias=False, dtype=dtype, device=device),
            SiLUActivation(),
            ops.Linear(mlp_hidden_dim, hidden_size, bias=False, dtype=dtype, device=device),
        )
    return nn.Sequential(
        ops.Linear(hidden_size, mlp_hidden_dim, bias=True, dtype=dtype, device=device),
        nn.GELU(approximate="tanh"),
        ops.Linear(mlp_hidden_dim, hidden_size, bias=True, dtype=dtype, device=device),
    )


def _patched_attention(q: Tensor, k: Tensor, v: Tensor, pe: Any, mask: Any, options: Mapping[str, Any], extra: dict[str, Any]) -> Tensor:
    patches = options.get("patches", {})
    for patch in patches.get("attn1_patch", ()):
        out = patch(q, k, v, pe=pe, attn_mask=mask, extra_options=extra)
        q, k, v = out.get("q", q), out.get("k", k), out.get("v", v)
        pe, mask = out.get("pe", pe), out.get("attn_mask", mask)
    attn = attention(q, k, v, pe=pe, mask=mask, transformer_options=options)
    for patch in patches.get("attn1_output_patch", ()):
        attn = patch(attn, extra)
    return attn


def _heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def _clamp_half(x: Tensor) -> Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504) if x.dtype == torch.float16 else x


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, one joint attention over both."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False, modulation: bool = True, mlp_silu_act: bool = False, proj_bias: bool = True, yak_mlp: bool = False, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.modulation = modulation
        for stream in ("img", "txt"):
            if modulation:
                setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True, dtype=dtype, device=device, operations=ops))
            setattr(self, f"{stream}_norm1", ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, dtype=dtype, device=device, operations=ops))
            setattr(self, f"{stream}_norm2", ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device))
            setattr(self, f"{stream}_mlp", build_mlp(hidden_size, mlp_hidden, mlp_silu_act=mlp_silu_act, yak_mlp=yak_mlp, dtype=dtype, device=device, operations=ops))

    def forward(self, img: Tensor, txt: Tensor, vec: Any, pe: Tensor, attn_mask: Tensor | None = None, modulation_dims_img: Any = None, modulation_dims_txt: Any = None, transformer_options: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        options = dict(transformer_options or {})
        if self.modulation:
            img_mod1, img_mod2 = self.img_mod(vec)
            txt_mod1, txt_mod2 = self.txt_mod(vec)
        else:
            (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
        img_q, img_k, img_v = _heads(self.img_attn.qkv(apply_mod(self.img_norm1(img), 1 + img_mod1.scale, img_mod1.shift, modulation_dims_img)), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = _heads(self.txt_attn.qkv(apply_mod(self.txt_norm1(txt), 1 + txt_mod1.scale, txt_mod1.shift, modulation_dims_txt)), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        extra = {**options, "img_slice": [txt.shape[1], q.shape[2]]}
        attn = _patched_attention(q, k, v, pe, attn_mask, options, extra)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + apply_mod(self.img_attn.proj(img_attn), img_mod1.gate, None, modulation_dims_img)
        img = img + apply_mod(self.img_mlp(apply_mod(self.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift, modulation_dims_img)), img_mod2.gate, None, modulation_dims_img)
        txt = txt + apply_mod(self.txt_attn.proj(txt_attn), txt_mod1.gate, None, modulation_dims_txt)
        txt = txt + apply_mod(self.txt_mlp(apply_mod(self.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift, modulation_dims_txt)), txt_mod2.gate, None, modulation_dims_txt)
        return img, _clamp_half(txt)


class SingleStreamBlock(nn.Module):
    """One weight set for all tokens; attention and MLP computed in parallel from one projection."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_scale: float | None = None, modulation: bool = True, mlp_silu_act: bool = False, bias: bool = True, yak_mlp: bool = False, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.hidden_dim = hidden_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp_hidden_dim_first = self.mlp_hidden_dim
        self.yak_mlp = yak_mlp
        self.mlp_act: nn.Module = nn.GELU(approximate="tanh")
        if mlp_silu_act:
            self.mlp_hidden_dim_first = int(hidden_size * mlp_ratio * 2)
            self.mlp_act = SiLUActivation()
        if yak_mlp:
            self.mlp_hidden_dim_first *= 2
            self.mlp_act = nn.SiLU()
        self.linear1 = ops.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim_first, bias=bias, dtype=dtype, device=device)
        self.linear2 = ops.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, bias=bias, dtype=dtype, device=device)
        self.norm = QKNorm(head_dim, dtype=dtype, device=device, operations=ops)
        self.pre_norm = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.modulation = Modulation(hidden_size, double=False, dtype=dtype, device=device, operations=ops) if modulation else None

    def forward(self, x: Tensor, vec: Any, pe: Tensor, attn_mask: Tensor | None = None, modulation_dims: Any = None, transformer_options: Mapping[str, Any] | None = None) -> Tensor:
        options = dict(transformer_options or {})
        mod = self.modulation(vec)[0] if self.modulation is not None else vec
        qkv, mlp = torch.split(
            self.linear1(apply_mod(self.pre_norm(x), 1 + mod.scale, mod.shift, modulation_dims)),
            [3 * self.hidden_size, self.mlp_hidden_dim_first],
            dim=-1,
        )
        q, k, v = _heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = _patched_attention(q, k, v, pe, attn_mask, options, dict(options))
        if self.yak_mlp:
            half = self.mlp_hidden_dim_first // 2
            mlp = self.mlp_act(mlp[..., half:]) * mlp[..., :half]
        else:
            mlp = self.mlp_act(mlp)
        x = x + apply_mod(self.linear2(torch.cat((attn, mlp), 2)), mod.gate, None, modulation_dims)
        return _clamp_half(x)


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, bias: bool = True, dtype: Any = None, device: Any = None, operations: Any = None) -> None:
        super().__init__()
        ops = _ops(operations)
        self.norm_final = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.linear = ops.Linear(hidden_size, patch_size * patch_size * out_channels, bias=bias, dtype=dtype, device=device)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(hidden_size, 2 * hidden_size, bias=bias, dtype=dtype, device=device))

    def forward(self, x: Tensor, vec: Tensor, modulation_dims: Any = None) -> Tensor:
        if vec.ndim == 2:
            vec = vec[:, None, :]
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear(apply_mod(self.norm_final(x), 1 + scale, shift, modulation_dims))
