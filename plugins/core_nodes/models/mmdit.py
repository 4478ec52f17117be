"""The MMDiT of Stable Diffusion 3 / 3.5 in plain torch, in the reference's single-file key layout.

Latents are cut into ``patch_size`` squares (``x_embedder.proj``), given a learned position table
cropped to the latent's size around its centre (``pos_embed``), and run through ``depth`` joint
blocks. Each joint block holds two halves of the same shape, ``context_block`` (the text tokens)
and ``x_block`` (the image tokens), each modulated by the conditioning vector ``c`` =
``t_embedder(timestep)`` + ``y_embedder(pooled text)``; their queries, keys and values are joined
into one attention over text + image tokens, then each half runs its own MLP. The last block's
text half only feeds that attention (no output projection, no MLP: "pre-only").

SD3.5 adds RMS norms on each head's queries and keys (``attn.ln_q`` / ``attn.ln_k``); SD3.5
medium also gives the image half of its first blocks a second self-attention over the image
tokens only (``x_block.attn2``, nine modulation vectors instead of six). Every variant is told
from the weights (:func:`config_from_state_dict`); the reference's convention of one head per 64
channels gives the head count.

The call is the UNet's (``x, timesteps, context, y, control, transformer_options``), so the
model-base code drives both the same way; ``transformer_options["patches_replace"]["dit"]
[("double_block", i)]`` replaces joint block ``i`` as in the reference (skip-layer guidance
uses it), and ``control["output"][i]`` is added to the image tokens after block ``i``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models import attention
from plugins.core_nodes.models.extension import WrappersMP, run_wrapped
from plugins.core_nodes.models.operations import (
    FP8_DTYPES,
    FP8_STORAGE,
    CastOperations,
    Operations,
    TorchOperations,
    cast_plain_weights,
    fp8_layer_weights,
    is_default,
    load_into,
)
from plugins.core_nodes.models.unet import timestep_embedding

__all__ = [
    "MMDiT",
    "MMDiTConfig",
    "build_mmdit",
    "config_from_state_dict",
    "is_mmdit",
    "load_mmdit",
]

Options = dict[str, Any]

# The reference sizes heads at 64 channels (hidden = 64 * heads).
HEAD_WIDTH = 64
# Width of the sinusoidal timestep features fed to ``t_embedder``.
FREQUENCY_DIM = 256
_EPS = 1e-6
_BLOCK_RE = re.compile(r"^joint_blocks\.(\d+)\.")
_ATTN2_RE = re.compile(r"^joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")


@dataclass(frozen=True)
class MMDiTConfig:
    """Sizes of one MMDiT; ``x_block_self_attn_layers`` are the blocks with SD3.5-medium's second
    image self-attention, ``qk_norm`` is ``"rms"``, ``"ln"`` or None."""

    hidden_size: int
    depth: int
    num_heads: int
    in_channels: int = 16
    out_channels: int = 16
    patch_size: int = 2
    mlp_hidden: int = 0
    adm_in_channels: int | None = 2048
    context_in_dim: int | None = 4096
    pos_embed_max_size: int = 192
    qk_norm: str | None = None
    x_block_self_attn_layers: tuple[int, ...] = field(default_factory=tuple)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def is_mmdit(sd: Mapping[str, Any]) -> bool:
    """Whether un-prefixed weights are an MMDiT's (SD3 / SD3.5)."""
    return "x_embedder.proj.weight" in sd and "joint_blocks.0.x_block.attn.qkv.weight" in sd


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> MMDiTConfig:
    """Every size from the (un-prefixed) weights; shapes only, so meta tensors do."""
    proj = sd["x_embedder.proj.weight"]
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    final = sd["final_layer.linear.weight"]
    out_channels = int(final.shape[0]) // (patch * patch)
    pos = sd.get("pos_embed")
    pos_max = round(math.sqrt(pos.shape[1])) if pos is not None else 192
    adm = sd.get("y_embedder.mlp.0.weight")
    context = sd.get("context_embedder.weight")
    if "joint_blocks.0.x_block.attn.ln_q.weight" in sd:
        qk_norm: str | None = "ln" if "joint_blocks.0.x_block.attn.ln_q.bias" in sd else "rms"
    else:
        qk_norm = None
    self_attn = tuple(sorted(int(m.group(1)) for k in sd if (m := _ATTN2_RE.match(k))))
    return MMDiTConfig(
        hidden_size=hidden,
        depth=depth,
        num_heads=max(1, hidden // HEAD_WIDTH),
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=patch,
        mlp_hidden=int(sd["joint_blocks.0.x_block.mlp.fc1.weight"].shape[0]),
        adm_in_channels=None if adm is None else int(adm.shape[1]),
        context_in_dim=None if context is None else int(context.shape[1]),
        pos_embed_max_size=pos_max,
        qk_norm=qk_norm,
        x_block_self_attn_layers=self_attn,
    )


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned scale, computed in float32."""

    def __init__(self, dim: int, eps: float = _EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float().to(x.device)).to(x.dtype)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, ops: Operations) -> None:
        super().__init__()
        self.fc1 = ops.Linear(dim, hidden)
        self.fc2 = ops.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _Embedder(nn.Module):
    """``Linear, SiLU, Linear`` under the reference's ``mlp.0`` / ``mlp.2`` names."""

    def __init__(self, dim_in: int, dim: int, ops: Operations) -> None:
        super().__init__()
        self.mlp = nn.Sequential(ops.Linear(dim_in, dim), nn.SiLU(), ops.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SelfAttention(nn.Module):
    """Fused qkv projection with optional per-head q/k norms; ``proj`` is absent when pre-only."""

    def __init__(self, dim: int, heads: int, pre_only: bool, qk_norm: str | None, ops: Operations) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = ops.Linear(dim, dim * 3)
        if not pre_only:
            self.proj = ops.Linear(dim, dim)
        self.ln_q: nn.Module
        self.ln_k: nn.Module
        if qk_norm == "rms":
            self.ln_q, self.ln_k = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        elif qk_norm == "ln":
            self.ln_q = ops.LayerNorm(self.head_dim, elementwise_affine=True, eps=_EPS)
            self.ln_k = ops.LayerNorm(self.head_dim, elementwise_affine=True, eps=_EPS)
        else:
            self.ln_q, self.ln_k = nn.Identity(), nn.Identity()

    def pre_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, heads, tokens, head_dim]``."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)
        q, k = self.ln_q(q), self.ln_k(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def post_attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _attend(qkv: Sequence[torch.Tensor], heads: int) -> torch.Tensor:
    """Attention over ``[B, heads, N, dim]`` q/k/v (the server's current attention function)."""
    q, k, v = qkv
    return attention.current()(q, k, v, heads, skip_reshape=True)


class DismantledBlock(nn.Module):
    """One half of a joint block: modulation, attention in and out, MLP (the reference's name)."""

    def __init__(
        self, config: MMDiTConfig, pre_only: bool, self_attn: bool, ops: Operations
    ) -> None:
        super().__init__()
        dim = config.hidden_size
        self.pre_only = pre_only
        self.x_block_self_attn = self_attn
        self.norm1 = ops.LayerNorm(dim, elementwise_affine=False, eps=_EPS)
        self.attn = SelfAttention(dim, config.num_heads, pre_only, config.qk_norm, ops)
        if self_attn:
            self.attn2 = SelfAttention(dim, config.num_heads, False, config.qk_norm, ops)
        if not pre_only:
            self.norm2 = ops.LayerNorm(dim, elementwise_affine=False, eps=_EPS)
            self.mlp = _Mlp(dim, config.mlp_hidden or 4 * dim, ops)
        self.chunks = 2 if pre_only else (9 if self_attn else 6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(dim, self.chunks * dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor) -> tuple[Any, ...]:
        """(qkv, qkv of the second attention or None, what :meth:`post_attention` needs)."""
        mod = self.adaLN_modulation(c).chunk(self.chunks, dim=1)
        normed = self.norm1(x)
        qkv = self.attn.pre_attention(modulate(normed, mod[0], mod[1]))
        if self.pre_only:
            return qkv, None, None
        qkv2 = self.attn2.pre_attention(modulate(normed, mod[6], mod[7])) if self.x_block_self_attn else None
        return qkv, qkv2, (x, *mod[2:6], *mod[8:9])

    def post_attention(self, attn: torch.Tensor, attn2: torch.Tensor | None, saved: Sequence[torch.Tensor]) -> torch.Tensor:
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp, *rest = saved
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        if attn2 is not None:
            x = x + rest[0].unsqueeze(1) * self.attn2.post_attention(attn2)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, heads, n, dim = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * dim)


class JointBlock(nn.Module):
    """Text and image halves attending together; the last block's text half is pre-only."""

    def __init__(self, config: MMDiTConfig, pre_only: bool, self_attn: bool, ops: Operations) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.context_block = DismantledBlock(config, pre_only, False, ops)
        self.x_block = DismantledBlock(config, False, self_attn, ops)

    def forward(
        self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        ctx_qkv, _, ctx_saved = self.context_block.pre_attention(context, c)
        x_qkv, x_qkv2, x_saved = self.x_block.pre_attention(x, c)
        joint = [torch.cat((a, b), dim=2) for a, b in zip(ctx_qkv, x_qkv, strict=True)]
        out = _merge_heads(attention.current()(*joint, self.heads, skip_reshape=True, skip_output_reshape=True))
        n_ctx = context.shape[1]
        ctx_out, x_out = out[:, :n_ctx], out[:, n_ctx:]
        attn2 = None
        if x_qkv2 is not None:
            attn2 = _merge_heads(attention.current()(*x_qkv2, self.heads, skip_reshape=True, skip_output_reshape=True))
        x = self.x_block.post_attention(x_out, attn2, x_saved)
        if self.context_block.pre_only:
            return None, x
        return self.context_block.post_attention(ctx_out, None, ctx_saved), x


class PatchEmbed(nn.Module):
    def __init__(self, config: MMDiTConfig, ops: Operations) -> None:
        super().__init__()
        p = config.patch_size
        self.proj = ops.Conv2d(config.in_channels, config.hidden_size, kernel_size=p, stride=p, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    def __init__(self, config: MMDiTConfig, ops: Operations) -> None:
        super().__init__()
        dim, p = config.hidden_size, config.patch_size
        self.norm_final = ops.LayerNorm(dim, elementwise_affine=False, eps=_EPS)
        self.linear = ops.Linear(dim, p * p * config.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MMDiT(nn.Module):
    """The SD3 / SD3.5 diffusion transformer (``diffusion_model`` of an SD3 MODEL).

    ``operations`` is the layer set (torch's by default); ``compute_dtype`` the dtype inputs are
    cast to when the stored weights are not in it (None: the weights' own)."""

    def __init__(
        self, config: MMDiTConfig, operations: Operations | None = None, compute_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        ops = operations or TorchOperations
        self.config = config
        self.compute_dtype = compute_dtype
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config, ops)
        self.t_embedder = _Embedder(FREQUENCY_DIM, dim, ops)
        self.y_embedder = _Embedder(config.adm_in_channels, dim, ops) if config.adm_in_channels else None
        self.context_embedder: nn.Module = (
            ops.Linear(config.context_in_dim, dim) if config.context_in_dim else nn.Identity()
        )
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, dim))
        self.joint_blocks = nn.ModuleList(
            JointBlock(config, i == config.depth - 1, i in config.x_block_self_attn_layers, ops)
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(config, ops)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        return self.final_layer.linear.weight.dtype

    def cropped_pos_embed(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The position table's centre ``h x w`` patches for a latent of ``height x width``."""
        p, size = self.config.patch_size, self.config.pos_embed_max_size
        h, w = (height + 1) // p, (width + 1) // p
        if h > size or w > size:
            raise ValueError(
                f"a latent of {height}x{width} needs {h}x{w} patches, more than this model's {size}x{size} positions"
            )
        top, left = (size - h) // 2, (size - w) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top : top + h, left : left + w, :]
        return table.reshape(1, h * w, -1).to(device)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[Any]] | None = None,
        transformer_options: Options | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The predicted velocity for latents ``x`` ``[B, C, H, W]`` at ``timesteps`` (sigma * 1000)
        given text tokens ``context`` and pooled text ``y``. ``WrappersMP.DIFFUSION_MODEL``
        wrappers surround the call as for the UNet."""
        options: Options = {} if transformer_options is None else transformer_options
        return run_wrapped(WrappersMP.DIFFUSION_MODEL, options, self._forward, self, x, timesteps, context, y, control, options, **kwargs)

    def _forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[Any]] | None = None,
        transformer_options: Options | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if timesteps is None:
            raise ValueError("the MMDiT needs timesteps")
        if context is None:
            raise ValueError("the MMDiT needs text tokens (context)")
        options: Options = {} if transformer_options is None else transformer_options
        options["original_shape"] = list(x.shape)
        replace = options.get("patches_replace", {}).get("dit", {})
        dtype, out_dtype = self.dtype, x.dtype
        height, width = x.shape[-2:]
        p = self.config.patch_size
        # The reference pads odd sizes circularly up to whole patches and crops the result back.
        pad_h, pad_w = (-height) % p, (-width) % p
        h = x.to(dtype)
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="circular")
        tokens = self.x_embedder(h) + self.cropped_pos_embed(height, width, h.device).to(dtype)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        c = self.t_embedder(timestep_embedding(timesteps, FREQUENCY_DIM).to(dtype))
        if y is not None and self.y_embedder is not None:
            c = c + self.y_embedder(y.to(dtype))
        ctx: torch.Tensor | None = self.context_embedder(context.to(dtype))
        added = (control or {}).get("output") or []
        for i, block in enumerate(self.joint_blocks):
            options["block_index"] = i
            if ("double_block", i) in replace:

                def original(args: Mapping[str, Any], block: JointBlock = block) -> dict[str, Any]:
                    txt, img = block(args["txt"], args["img"], args["vec"])
                    return {"txt": txt, "img": img}

                out = replace[("double_block", i)](
                    {"img": tokens, "txt": ctx, "vec": c, "transformer_options": options},
                    {"original_block": original},
                )
                ctx, tokens = out["txt"], out["img"]
            else:
                assert ctx is not None
                ctx, tokens = block(ctx, tokens, c)
            if i < len(added) and added[i] is not None:
                tokens = tokens + added[i].to(tokens)
        out = self.final_layer(tokens, c)
        return self._unpatchify(out, height + pad_h, width + pad_w)[:, :, :height, :width].to(out_dtype)

    def _unpatchify(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.out_channels
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)


def build_mmdit(
    sd: Mapping[str, torch.Tensor],
    config: MMDiTConfig | None = None,
    dtype: torch.dtype | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> MMDiT:
    """An MMDiT with exactly these (un-prefixed) weights; missing or extra tensors are an error.

    With our layers every weight is cast to ``dtype`` (default: the final projection's). With a
    caller's ``operations`` the layers keep what they load and plain floating-point weights are
    cast to ``weight_dtype`` (default ``dtype``); the network computes in ``dtype`` (default
    float32, or the plain weights' dtype)."""
    config = config or config_from_state_dict(sd)
    if is_default(operations):
        with torch.device("meta"):
            model = MMDiT(config)
        load_into(model, sd, None)
        model.to(dtype or sd["final_layer.linear.weight"].dtype)
        return model.eval().requires_grad_(False)
    plain = next((v.dtype for v in sd.values() if type(v) is torch.Tensor and v.is_floating_point()), None)
    compute = dtype or plain or torch.float32
    with torch.device("meta"):
        model = MMDiT(config, operations, compute)
    load_into(model, sd, operations)
    # fp8 storage behind casting layers stays fp8 (the layers widen it per call).
    keep = FP8_DTYPES if operations is CastOperations else ()
    cast_plain_weights(model, weight_dtype or compute, keep)
    return model.eval().requires_grad_(False)


def load_mmdit(
    sd: Mapping[str, torch.Tensor],
    config: MMDiTConfig | None = None,
    compute_dtype: torch.dtype | None = None,
    weight_dtype: str = "default",
) -> MMDiT:
    """The MMDiT of a checkpoint or diffusion-model file (un-prefixed weights). fp8 storage (the
    file's, or UNETLoader's ``weight_dtype`` choice) is kept and cast per layer as it runs, as for
    Flux: layer matrices and the patch kernel in fp8, vectors and the position table as stored.
    ``compute_dtype`` None computes in the file's half dtype (fp8 files: bf16)."""
    storage = FP8_STORAGE.get(weight_dtype)
    stored = sd["x_embedder.proj.weight"].dtype
    if storage is None and stored not in FP8_DTYPES:
        return build_mmdit(sd, config, compute_dtype)
    compute = compute_dtype or (stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16)
    if storage is not None:
        sd = fp8_layer_weights(sd, storage, keep=("pos_embed",))
    return build_mmdit(sd, config, compute, operations=CastOperations)
