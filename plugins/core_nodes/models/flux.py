"""The Flux.1 transformer (dev and schnell) in plain torch, in the reference's single-file layout.

Latents ``[B, 16, H, W]`` are cut into 2x2 patches (``(c ph pw)`` order, 64 features per token)
and embedded by ``img_in``; the T5 text by ``txt_in``. A conditioning vector ``vec`` sums the
embedded timestep (``time_in``), the distilled guidance (``guidance_in``, dev only) and the pooled
CLIP-L text (``vector_in``). ``double_blocks`` keep image and text streams apart, with their own
modulation, QK-normed attention over both and MLPs; ``single_blocks`` run on the joined sequence
with one fused projection (``linear1``: q, k, v and the MLP input; ``linear2``: attention and MLP
out). Positions are 3-axis ids (0 for text; row and column for image tokens) turned into rotary
embeddings of ``axes_dim`` widths per axis. Attention is ``scaled_dot_product_attention``.

Parameter names are the reference's (``double_blocks.N.img_attn.qkv.weight``,
``single_blocks.N.linear1.weight``, ``final_layer.adaLN_modulation.1.weight`` ...), with or without
the checkpoint's ``model.diffusion_model.`` prefix; sizes come from the weights
(:func:`config_from_state_dict`), so a narrow test model loads like the real one. Weighted layers
are built through an *operations* set, so fp8 storage can be cast per layer when it runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .extension import WrappersMP, run_wrapped
from .operations import Operations, TorchOperations, cast_plain_weights, load_into
from .unet import timestep_embedding as unet_timestep_embedding

__all__ = [
    "FLUX_DEV",
    "FLUX_SCHNELL",
    "FluxConfig",
    "FluxTransformer",
    "build_flux",
    "config_from_state_dict",
    "is_flux_state_dict",
    "rope",
    "timestep_embedding",
]

PATCH = 2
TIME_DIM = 256


@dataclass(frozen=True)
class FluxConfig:
    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_hidden: int = 12288
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_channels(self) -> int:
        return self.in_channels // (PATCH * PATCH)

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_hidden / self.hidden_size

    @property
    def variant(self) -> str:
        """``dev`` (guidance-distilled, a guidance embedding) or ``schnell``."""
        return "dev" if self.guidance_embed else "schnell"


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = replace(FLUX_DEV, guidance_embed=False)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t * time_factor``: the UNet's embedding (cosines first, float32)."""
    return unet_timestep_embedding(time_factor * t.float(), dim, max_period)


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """Rotation matrices ``[..., n, dim/2, 2, 2]`` for positions ``pos`` ``[..., n]`` (computed in
    float64 as the reference does, returned in float32)."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def position_embedding(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> torch.Tensor:
    """``ids`` ``[B, L, axes]`` -> ``[B, 1, L, head_dim/2, 2, 2]``."""
    parts = [rope(ids[..., i], axes_dim[i], theta) for i in range(ids.shape[-1])]
    return torch.cat(parts, dim=-3).unsqueeze(1)


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive feature pairs of ``x`` ``[B, H, L, D]`` by ``pe``."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Rotary attention over ``[B, H, L, D]`` -> ``[B, L, H * D]``."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.in_layer = ops.Linear(in_dim, hidden, bias=True, device=device, dtype=dtype)
        self.out_layer = ops.Linear(hidden, hidden, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm in float32 with a learned ``scale`` (the reference's parameter name)."""

    def __init__(self, dim: int, device: Any, dtype: Any) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        return normed * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int, device: Any, dtype: Any) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim, device, dtype)
        self.key_norm = RMSNorm(dim, device, dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, c: FluxConfig, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.qkv = ops.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.qkv_bias, device=device, dtype=dtype)
        self.norm = QKNorm(c.head_dim, device, dtype)
        self.proj = ops.Linear(c.hidden_size, c.hidden_size, device=device, dtype=dtype)


class Modulation(nn.Module):
    """``lin(silu(vec))`` cut into (shift, scale, gate) triples: two for double blocks, one for single."""

    def __init__(self, dim: int, double: bool, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.count = 6 if double else 3
        self.lin = ops.Linear(dim, self.count * dim, bias=True, device=device, dtype=dtype)

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list(self.lin(F.silu(vec))[:, None, :].chunk(self.count, dim=-1))


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    # Flux's norms have no affine parameters (eps 1e-6).
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, L, 3 * H * D]`` -> q, k, v ``[B, H, L, D]`` (the reference's ``(K H D)`` order)."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def _mlp(c: FluxConfig, ops: Operations, device: Any, dtype: Any) -> nn.Sequential:
    return nn.Sequential(
        ops.Linear(c.hidden_size, c.mlp_hidden, bias=True, device=device, dtype=dtype),
        nn.GELU(approximate="tanh"),
        ops.Linear(c.mlp_hidden, c.hidden_size, bias=True, device=device, dtype=dtype),
    )


class DoubleStreamBlock(nn.Module):
    def __init__(self, c: FluxConfig, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.num_heads = c.num_heads
        for side in ("img", "txt"):
            self.add_module(f"{side}_mod", Modulation(c.hidden_size, True, ops, device, dtype))
            self.add_module(f"{side}_attn", SelfAttention(c, ops, device, dtype))
            self.add_module(f"{side}_mlp", _mlp(c, ops, device, dtype))

    def _qkv(self, side: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        attn: SelfAttention = getattr(self, f"{side}_attn")
        q, k, v = _split_heads(attn.qkv((1 + scale) * _layer_norm(x) + shift), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        im = self.img_mod(vec)
        tm = self.txt_mod(vec)
        iq, ik, iv = self._qkv("img", img, im[0], im[1])
        tq, tk, tv = self._qkv("txt", txt, tm[0], tm[1])
        # Text tokens first, as the position ids are laid out.
        out = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe)
        n_txt = txt.shape[1]
        txt_out, img_out = out[:, :n_txt], out[:, n_txt:]
        img = img + im[2] * self.img_attn.proj(img_out)
        img = img + im[5] * self.img_mlp((1 + im[4]) * _layer_norm(img) + im[3])
        txt = txt + tm[2] * self.txt_attn.proj(txt_out)
        txt = txt + tm[5] * self.txt_mlp((1 + tm[4]) * _layer_norm(txt) + tm[3])
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, c: FluxConfig, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.num_heads = c.num_heads
        self.hidden_size = c.hidden_size
        self.linear1 = ops.Linear(c.hidden_size, 3 * c.hidden_size + c.mlp_hidden, device=device, dtype=dtype)
        self.linear2 = ops.Linear(c.hidden_size + c.mlp_hidden, c.hidden_size, device=device, dtype=dtype)
        self.norm = QKNorm(c.head_dim, device, dtype)
        self.modulation = Modulation(c.hidden_size, False, ops, device, dtype)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1((1 + scale) * _layer_norm(x) + shift), [3 * self.hidden_size, self.linear2.in_features - self.hidden_size], dim=-1
        )
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe), F.gelu(mlp, approximate="tanh")), 2))
        x = x + gate * out
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return x


class LastLayer(nn.Module):
    def __init__(self, c: FluxConfig, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.linear = ops.Linear(c.hidden_size, c.out_channels, bias=True, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(  # noqa: N815 - the reference's key
            nn.SiLU(), ops.Linear(c.hidden_size, 2 * c.hidden_size, bias=True, device=device, dtype=dtype)
        )

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * _layer_norm(x) + shift[:, None, :])


class FluxTransformer(nn.Module):
    """The Flux network. :meth:`forward` takes latents ``[B, C, H, W]`` (any H, W: odd sizes are
    padded to whole patches and cut back) and gives the flow prediction of the same shape."""

    def __init__(
        self,
        config: FluxConfig = FLUX_DEV,
        operations: Operations | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ops = operations or TorchOperations
        c = config
        if sum(c.axes_dim) != c.head_dim:
            raise ValueError(f"rotary axes {c.axes_dim} must add up to the head width {c.head_dim}")
        self.config = c
        self.img_in = ops.Linear(c.in_channels, c.hidden_size, bias=True, device=device, dtype=dtype)
        self.time_in = MLPEmbedder(TIME_DIM, c.hidden_size, ops, device, dtype)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size, ops, device, dtype)
        if c.guidance_embed:
            self.guidance_in = MLPEmbedder(TIME_DIM, c.hidden_size, ops, device, dtype)
        self.txt_in = ops.Linear(c.context_in_dim, c.hidden_size, device=device, dtype=dtype)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(c, ops, device, dtype) for _ in range(c.depth)])
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(c, ops, device, dtype) for _ in range(c.depth_single_blocks)]
        )
        self.final_layer = LastLayer(c, ops, device, dtype)
        # What the network computes in (None: its weights' dtype); ModelComputeDtype's casting view sets it.
        self.compute_dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in (the first modulation's bias: a plain tensor even with fp8 layers)."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        return self.img_in.bias.dtype

    def forward_tokens(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | None = None,
        control: Mapping[str, Any] | None = None,
        transformer_options: Mapping[str, Any] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reference's ``forward_orig``: patch tokens ``[B, L, in_channels]`` -> ``[B, L, out]``.

        Patch points, as the reference's: ``patches["post_input"]`` (the embedded tokens and their
        position ids, before the rotary table is made), ``patches_replace["dit"][("double_block",
        i)]`` / ``[("single_block", i)]`` (a block replaced, its original passed along), ControlNet
        residuals ``control["input"][i]`` / ``control["output"][i]`` added to the image tokens after
        double / single block ``i``. ``patches["double_block"]`` are not run: the reference's Flux
        ignores them (only its Qwen-Image DiT calls them), and packs are written against that.
        ``transformer_options``
        (copied, so the caller's is left alone) carries ``block_type``, ``block_index``,
        ``total_blocks`` and, in single blocks, ``img_slice`` (where the image tokens sit).
        """
        c = self.config
        dtype = self.dtype
        options: dict[str, Any] = dict(transformer_options or {})
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {}).get("dit", {})
        img = self.img_in(img.to(dtype))
        vec = self.time_in(timestep_embedding(timesteps, TIME_DIM).to(dtype))
        if c.guidance_embed:
            if guidance is None:
                raise ValueError("this Flux model (dev) needs a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance.reshape(-1), TIME_DIM).to(dtype))
        vec = vec + self.vector_in(y[:, : c.vec_in_dim].to(dtype))
        txt = self.txt_in(txt.to(dtype))
        for patch in patches.get("post_input", []):
            out = patch({"img": img, "txt": txt, "img_ids": img_ids, "txt_ids": txt_ids, "transformer_options": options})
            img, txt, img_ids, txt_ids = out["img"], out["txt"], out["img_ids"], out["txt_ids"]
        pe = position_embedding(torch.cat((txt_ids, img_ids), dim=1), c.axes_dim, c.theta)
        control_in = list((control or {}).get("input") or [])
        control_out = list((control or {}).get("output") or [])

        options.update(total_blocks=len(self.double_blocks), block_type="double")
        for i, block in enumerate(self.double_blocks):
            options["block_index"] = i
            if ("double_block", i) in replace:

                def original(args: Mapping[str, Any], block: DoubleStreamBlock = block) -> dict[str, torch.Tensor]:
                    img, txt = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"])
                    return {"img": img, "txt": txt}

                args = {"img": img, "txt": txt, "vec": vec, "pe": pe, "attn_mask": None, "transformer_options": options}
                out = replace[("double_block", i)](args, {"original_block": original})
                img, txt = out["img"], out["txt"]
            else:
                img, txt = block(img, txt, vec, pe)
            if i < len(control_in) and control_in[i] is not None:
                img = _add_rows(img, control_in[i], 0)
        if img.dtype == torch.float16:
            img = torch.nan_to_num(img, nan=0.0, posinf=65504, neginf=-65504)

        n_txt = txt.shape[1]
        x = torch.cat((txt, img), 1)
        options.update(total_blocks=len(self.single_blocks), block_type="single", img_slice=[n_txt, x.shape[1]])
        for i, single in enumerate(self.single_blocks):
            options["block_index"] = i
            if ("single_block", i) in replace:

                def original_single(args: Mapping[str, Any], block: SingleStreamBlock = single) -> dict[str, torch.Tensor]:
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"])}

                args = {"img": x, "vec": vec, "pe": pe, "attn_mask": None, "transformer_options": options}
                x = replace[("single_block", i)](args, {"original_block": original_single})["img"]
            else:
                x = single(x, vec, pe)
            if i < len(control_out) and control_out[i] is not None:
                x = _add_rows(x, control_out[i], n_txt)
        return self.final_layer(x[:, n_txt:], vec)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Latents ``[B, C, H, W]`` at ``timesteps`` (flow time in 0..1), T5 ``context``
        ``[B, T, context_in_dim]``, pooled CLIP ``y`` ``[B, vec_in_dim]``, ``guidance`` ``[B]``;
        ``control`` and ``transformer_options`` as :meth:`forward_tokens` reads them.
        ``WrappersMP.DIFFUSION_MODEL`` wrappers surround the call as for the UNet."""
        options: dict[str, Any] = {} if transformer_options is None else transformer_options  # type: ignore[assignment]
        return run_wrapped(WrappersMP.DIFFUSION_MODEL, options, self._forward, self, x, timesteps, context, y, guidance, control, options, **kwargs)

    def _forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        pad_h, pad_w = (-h) % PATCH, (-w) % PATCH
        latents = x
        if pad_h or pad_w:
            # The reference pads odd sizes circularly to whole patches.
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        hp, wp = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        img = x.reshape(b, -1, hp, PATCH, wp, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, hp * wp, -1)
        img_ids = torch.zeros(hp, wp, 3, device=x.device, dtype=torch.float32)
        img_ids[..., 1] = torch.arange(hp, device=x.device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(wp, device=x.device, dtype=torch.float32)[None, :]
        img_ids = img_ids.reshape(1, hp * wp, 3).expand(b, -1, -1)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device, dtype=torch.float32)
        if y is None:
            y = torch.zeros(b, self.config.vec_in_dim, device=x.device, dtype=x.dtype)
        out = self.forward_tokens(
            img, img_ids, context, txt_ids, timesteps, y, guidance, control, transformer_options, latents
        )
        # Tokens a post_input patch appended (a reference image's) are dropped, as the reference does.
        out = out[:, : hp * wp].reshape(b, hp, wp, -1, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, -1, hp * PATCH, wp * PATCH)[:, :, :h, :w]


def _add_rows(tokens: torch.Tensor, residual: torch.Tensor, start: int) -> torch.Tensor:
    """``tokens`` with ``residual`` added to its rows ``start`` .. ``start + len`` (a ControlNet's
    residual may cover only the first image tokens)."""
    end = start + residual.shape[1]
    return torch.cat((tokens[:, :start], tokens[:, start:end] + residual.to(tokens), tokens[:, end:]), 1)


_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.")
FLUX_PREFIX = "model.diffusion_model."


def is_flux_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether un-prefixed ``sd`` holds a Flux transformer."""
    return "double_blocks.0.img_attn.qkv.weight" in sd and "img_in.weight" in sd and "final_layer.linear.weight" in sd


def _count(sd: Mapping[str, Any], pattern: re.Pattern[str]) -> int:
    found = [int(m.group(1)) for k in sd if (m := pattern.match(k))]
    return 1 + max(found) if found else 0


def default_axes(head_dim: int) -> tuple[int, int, int]:
    """The reference's (16, 56, 56) for 128-wide heads; narrower heads split in the same ratio
    (even widths), so test-sized models get rotary axes that fit."""
    if head_dim == 128:
        return (16, 56, 56)
    side = (head_dim * 7 // 16) // 2 * 2
    return (head_dim - 2 * side, side, side)


def config_from_state_dict(sd: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None) -> FluxConfig:
    """Sizes from shapes (meta tensors suffice): widths from ``img_in`` / ``txt_in`` / ``vector_in``,
    head width from the QK-norm scale, depths by counting blocks, dev vs schnell by
    ``guidance_in``."""
    if not is_flux_state_dict(sd):
        raise ValueError("no Flux transformer weights (double_blocks.0.img_attn.qkv.weight) found")
    hidden, in_channels = (int(n) for n in sd["img_in.weight"].shape)
    head_dim = int(sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0])
    return FluxConfig(
        in_channels=in_channels,
        out_channels=int(sd["final_layer.linear.weight"].shape[0]),
        vec_in_dim=int(sd["vector_in.in_layer.weight"].shape[1]),
        context_in_dim=int(sd["txt_in.weight"].shape[1]),
        hidden_size=hidden,
        mlp_hidden=int(sd["double_blocks.0.img_mlp.0.weight"].shape[0]),
        num_heads=hidden // head_dim,
        depth=_count(sd, _DOUBLE),
        depth_single_blocks=_count(sd, _SINGLE),
        axes_dim=tuple(axes_dim) if axes_dim is not None else default_axes(head_dim),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in sd,
        guidance_embed="guidance_in.in_layer.weight" in sd,
    )


def strip_flux_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's own keys: a checkpoint's ``model.diffusion_model.`` ones, or all of them."""
    inner = {k[len(FLUX_PREFIX) :]: v for k, v in sd.items() if k.startswith(FLUX_PREFIX)}
    return inner or dict(sd)


def build_flux(
    sd: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    operations: Operations | None = None,
    config: FluxConfig | None = None,
) -> FluxTransformer:
    """A :class:`FluxTransformer` holding ``sd``'s tensors (prefix optional). With the default
    layers plain weights end up in ``dtype`` (default: the file's); with a caller's ``operations``
    (fp8 storage cast per layer) the weights stay as stored and the network computes in ``dtype``."""
    weights = {k: v for k, v in strip_flux_prefix(sd).items() if not k.startswith(("vae.", "text_encoders."))}
    config = config or config_from_state_dict(weights)
    stored = weights["img_in.weight"].dtype
    compute = dtype or (stored if stored in (torch.float16, torch.bfloat16, torch.float32) else torch.bfloat16)
    with torch.device("meta"):
        model = FluxTransformer(config, operations, dtype=compute if operations is not None else None)
    load_into(model, weights, operations)
    if operations is None:
        cast_plain_weights(model, compute)
    else:
        # Norm scales are plain parameters; they follow the compute dtype.
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.scale = nn.Parameter(module.scale.detach().to(compute), requires_grad=False)
    return model.eval()
