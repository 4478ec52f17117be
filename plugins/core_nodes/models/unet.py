"""The latent-diffusion UNet of SD1.x, SD2.x and SDXL, built from a config read off the weights.

Module and parameter names follow the original single-file layout (``input_blocks.N.M``,
``middle_block``, ``output_blocks``, ``label_emb``) so a checkpoint's ``model.diffusion_model.*``
tensors load with a plain ``load_state_dict``. :func:`config_from_state_dict` derives every
architectural choice from key names and tensor shapes, never from a table of known sizes, so a
tiny test model of the same architecture is understood like a real one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes import patchpoints
from plugins.core_nodes.models import attention
from plugins.core_nodes.models.extension import WrappersMP, run_wrapped
from plugins.core_nodes.models.operations import (
    Operations,
    TorchOperations,
    cast_plain_weights,
    is_default,
    load_into,
)

log = logging.getLogger("comfykernel.core_nodes")
# The compatibility module whose ``forward_timestep_embed`` packs replace.
OPENAIMODEL_MODULE = "comfy.ldm.modules.diffusionmodules.openaimodel"

# Each SDXL size / crop / aesthetic scalar becomes a sinusoidal vector of this width before it is
# concatenated with the pooled text embedding into the ADM ("label") input.
ADM_SCALAR_DIM = 256


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to build a :class:`UNetModel`; ``transformer_depth`` is per level."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    transformer_depth_output: tuple[int, ...]
    transformer_depth_middle: int
    context_dim: int | None
    use_linear_in_transformer: bool
    # Exactly one of the two is set: SD1 fixes the head count, SD2/SDXL fix the head width.
    num_heads: int | None = None
    num_head_channels: int | None = None
    adm_in_channels: int | None = None

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(number of heads, width per head) for a transformer over ``channels`` features."""
        if self.num_heads is not None:
            return self.num_heads, channels // self.num_heads
        assert self.num_head_channels is not None
        # max(1, ...) only matters for test-sized models narrower than one head.
        heads = max(1, channels // self.num_head_channels)
        return heads, channels // heads


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, repeat_only: bool = False
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosines first, in float32.

    ``repeat_only`` gives each timestep repeated ``dim`` times instead (the reference's option).
    """
    if repeat_only:
        return timesteps[:, None].expand(-1, dim)
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * exponent.exp()[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sdxl_adm(
    pooled: torch.Tensor,
    height: float,
    width: float,
    crop_h: float = 0.0,
    crop_w: float = 0.0,
    target_height: float | None = None,
    target_width: float | None = None,
    aesthetic_score: float | None = None,
) -> torch.Tensor:
    """The SDXL ADM vector: pooled text embedding + embedded size / crop (/ target or score).

    The base model embeds (height, width, crop_h, crop_w, target_height, target_width); the
    refiner replaces the target size by one aesthetic score (pass ``aesthetic_score``).
    """
    if aesthetic_score is None:
        th = height if target_height is None else target_height
        tw = width if target_width is None else target_width
        scalars = [height, width, crop_h, crop_w, th, tw]
    else:
        scalars = [height, width, crop_h, crop_w, aesthetic_score]
    values = torch.tensor(scalars, dtype=torch.float32, device=pooled.device)
    emb = timestep_embedding(values, ADM_SCALAR_DIM).reshape(1, -1)
    emb = emb.repeat(pooled.shape[0], 1).to(pooled.dtype)
    return torch.cat([pooled, emb], dim=1)


def _norm(channels: int, eps: float = 1e-5, ops: Operations = TorchOperations) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else math.gcd(32, channels)
    return ops.GroupNorm(groups, channels, eps=eps)


Options = dict[str, Any]


class TimestepBlock(nn.Module):
    """A layer that also takes the timestep embedding (the reference's marker class)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ResBlock(TimestepBlock):
    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, ops: Operations = TorchOperations
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            _norm(channels, ops=ops), nn.SiLU(), ops.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels, ops=ops),
            nn.SiLU(),
            nn.Dropout(0.0),
            ops.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else ops.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention (the reference's ``CrossAttention``): ``to_q`` / ``to_k`` / ``to_v`` /
    ``to_out``; the attention itself is :func:`attention.current`, looked up on every call."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        ops: Operations = TorchOperations,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        kv_dim = dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = head_dim
        self.attn_precision: torch.dtype | None = None
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_k = ops.Linear(kv_dim, inner, bias=False)
        self.to_v = ops.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, dim), nn.Dropout(0.0))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        transformer_options: Options | None = None,
    ) -> torch.Tensor:
        ctx = x if context is None else context
        q, k = self.to_q(x), self.to_k(ctx)
        v = self.to_v(ctx if value is None else value)
        if mask is None:
            out = attention.current()(q, k, v, self.heads)
        else:
            out = attention.current_masked()(q, k, v, self.heads, mask)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult, ops), nn.Dropout(0.0), ops.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _extra_options(options: Options, block: TransformerBlock) -> Options:
    """What attention patches receive: the run's options without the patch tables, plus the layer's shape."""
    extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
    extra["n_heads"] = block.n_heads
    extra["dim_head"] = block.d_head
    extra["attn_precision"] = block.attn1.attn_precision
    return extra


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention and feed-forward (the reference's ``BasicTransformerBlock``).

    With ``transformer_options`` it applies the reference's patches: ``attn1_patch`` /
    ``attn2_patch`` ``(n, context, value, extra_options) -> (n, context, value)`` on the normed
    input before attention; ``patches_replace["attn1" | "attn2"]`` keyed ``(block_name, number,
    transformer_index)`` (or ``(block_name, number)``), ``(q, k, v, extra_options) -> out`` in place
    of the attention itself (projections in, ``to_out`` after); ``attn1_output_patch`` /
    ``attn2_output_patch`` ``(out, extra_options) -> out``; ``middle_patch`` ``(x, extra_options)``.
    """

    def __init__(
        self, dim: int, heads: int, head_dim: int, context_dim: int | None, ops: Operations = TorchOperations
    ) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim, ops=ops)
        self.ff = FeedForward(dim, ops=ops)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, ops=ops)
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.norm3 = ops.LayerNorm(dim)
        self.n_heads = heads
        self.d_head = head_dim
        # The reference's attributes, for packs whose replacement ``_forward`` reads them.
        self.inner_dim = heads * head_dim
        self.is_res = self.inner_dim == dim
        self.ff_in: nn.Module | None = None
        self.disable_self_attn = False
        self.switch_temporal_ca_to_sa = False

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, transformer_options: Options | None = None
    ) -> torch.Tensor:
        # Through ``_forward``, as the reference does: packs replace it on an instance.
        return self._forward(x, context, transformer_options)

    def _forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, transformer_options: Options | None = None
    ) -> torch.Tensor:
        options = transformer_options or {}
        patches: Mapping[str, list[Any]] = options.get("patches", {})
        replace: Mapping[str, Mapping[Any, Any]] = options.get("patches_replace", {})
        if not patches and not replace:
            x = self.attn1(self.norm1(x)) + x
            x = self.attn2(self.norm2(x), context) + x
            return self.ff(self.norm3(x)) + x

        extra = _extra_options(options, self)
        block = options.get("block")
        key = (block[0], block[1], options.get("block_index", 0)) if block is not None else None
        x = self._attend(self.attn1, "attn1", self.norm1(x), None, patches, replace, key, block, extra) + x
        for patch in patches.get("middle_patch", ()):
            x = patch(x, extra)
        x = self._attend(self.attn2, "attn2", self.norm2(x), context, patches, replace, key, block, extra) + x
        return self.ff(self.norm3(x)) + x

    @staticmethod
    def _attend(
        attn: Attention,
        name: str,
        n: torch.Tensor,
        context: torch.Tensor | None,
        patches: Mapping[str, list[Any]],
        replace: Mapping[str, Mapping[Any, Any]],
        key: tuple[Any, ...] | None,
        block: Any,
        extra: Options,
    ) -> torch.Tensor:
        value = None
        if patches.get(name + "_patch"):
            # Self-attention patches see the normed input as their context, as in the reference.
            context = n if context is None else context
            value = context
            for patch in patches[name + "_patch"]:
                n, context, value = patch(n, context, value, extra)
        table = replace.get(name, {})
        chosen = key if key in table else (tuple(block) if block is not None else None)
        if chosen is not None and chosen in table:
            context = n if context is None else context
            value = context if value is None else value
            out = table[chosen](attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
            out = attn.to_out(out)
        else:
            out = attn(n, context=context, value=value)
        for patch in patches.get(name + "_output_patch", ()):
            out = patch(out, extra)
        return out


class SpatialTransformer(nn.Module):
    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        depth: int,
        context_dim: int | None,
        linear: bool,
        ops: Operations = TorchOperations,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.use_linear = linear  # the reference's name
        self.in_channels = channels
        self.norm = _norm(channels, eps=1e-6, ops=ops)
        self.proj_in: nn.Module = ops.Linear(channels, inner) if linear else ops.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, ops) for _ in range(depth)
        )
        self.proj_out: nn.Module = ops.Linear(inner, channels) if linear else ops.Conv2d(inner, channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | list[torch.Tensor | None] | None = None,
        transformer_options: Options | None = None,
    ) -> torch.Tensor:
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        if transformer_options is not None:
            transformer_options["activations_shape"] = list(x.shape)
        residual = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        # Token-major and contiguous, so the norms and matmuls below read memory in order.
        x = x.reshape(b, x.shape[1], h * w).transpose(1, 2).contiguous()
        if self.linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            if transformer_options is not None:
                transformer_options["block_index"] = i
            x = block(x, contexts[i], transformer_options)
        if self.linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
        if not self.linear:
            x = self.proj_out(x)
        return x + residual


class Downsample(nn.Module):
    def __init__(self, channels: int, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.channels = channels
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.channels = channels
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
        # Upsampling to the skip's size (not just x2) keeps odd latent sizes working.
        if output_shape is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_shape[-2:]), mode="nearest")
        return self.conv(x)


def forward_timestep_embed(
    ts: Iterable[nn.Module],
    x: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor | None = None,
    transformer_options: Options | None = None,
    output_shape: Sequence[int] | None = None,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """Run the layers of one numbered block in order, each with the inputs it takes (the
    reference's function of this name: packs replace it to put their own layers in between)."""
    options = {} if transformer_options is None else transformer_options
    handlers = options.get("patches", {}).get("forward_timestep_embed_patch", ())
    for layer in ts:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = layer(x, context, options)
            if "transformer_index" in options:
                options["transformer_index"] += 1
        elif isinstance(layer, Upsample):
            x = layer(x, output_shape=output_shape)
        else:
            # A pack's own layer type is run by its ``(class, handler)`` patch, as the reference does.
            handler = next((h for cls, h in handlers if isinstance(layer, cls)), None)
            if handler is not None:
                x = handler(layer, x, emb, context, options, output_shape, None, None, None)
            else:
                x = layer(x)
    return x


class Block(nn.ModuleList):
    """One numbered entry of ``input_blocks`` / ``output_blocks``: layers applied in order
    (the reference's ``TimestepEmbedSequential``)."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        transformer_options: Options | None = None,
        output_shape: Sequence[int] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        return _forward_timestep_embed()(self, x, emb, context, transformer_options, output_shape)


def _forward_timestep_embed() -> Callable[..., torch.Tensor]:
    # Looked up on every call so that a pack's replacement (assigned to the compatibility module's
    # attribute) runs our blocks from then on.
    return patchpoints.lookup(OPENAIMODEL_MODULE, "forward_timestep_embed", forward_timestep_embed)


def apply_control(h: torch.Tensor, control: Mapping[str, list[Any]] | None, name: str) -> torch.Tensor:
    """``h`` plus the next ControlNet residual for ``name`` (``input`` / ``middle`` / ``output``),
    taken off the end of ``control[name]`` as the reference does. A residual of one batch item
    applies to every item (a T2I adapter's features from a one-image hint, while cond and uncond
    run as one batch); one that does not broadcast to ``h`` is skipped."""
    if control is None or not control.get(name):
        return h
    residual = control[name].pop()
    if residual is None:
        return h
    try:
        fits = torch.broadcast_shapes(residual.shape, h.shape) == h.shape
    except RuntimeError:
        fits = False
    if not fits:
        log.warning("ControlNet residual of shape %s does not fit %s; skipped", tuple(residual.shape), tuple(h.shape))
        return h
    return h + residual.to(h)



class UNetModel(nn.Module):
    """The network. ``operations`` is the layer set it is built from (see
    :mod:`~plugins.core_nodes.models.operations`; torch's layers by default); ``compute_dtype``
    the dtype inputs are cast to, for layers whose stored weights are not in it (quantized
    storage): None means the weights' own dtype."""

    def __init__(
        self, config: UNetConfig, operations: Operations | None = None, compute_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        ops = TorchOperations if operations is None else operations
        self.config = config
        self.operations = ops
        self.compute_dtype = compute_dtype
        mc = config.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(
                    ops.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim)
                )
            )

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, head_dim = config.heads_for(ch)
            return SpatialTransformer(
                ch, heads, head_dim, depth, config.context_dim, config.use_linear_in_transformer, ops
            )

        self.input_blocks = nn.ModuleList([Block([ops.Conv2d(config.in_channels, mc, 3, padding=1)])])
        skip_channels = [mc]
        ch = mc
        levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, ops)]
                ch = mult * mc
                if config.transformer_depth[level] > 0:
                    layers.append(transformer(ch, config.transformer_depth[level]))
                self.input_blocks.append(Block(layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(Block([Downsample(ch, ops)]))
                skip_channels.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch, ops)]
        if config.transformer_depth_middle > 0:
            middle.append(transformer(ch, config.transformer_depth_middle))
        middle.append(ResBlock(ch, emb_dim, ch, ops))
        self.middle_block = Block(middle)

        self.output_blocks = nn.ModuleList()
        out_index = 0
        for level in reversed(range(levels)):
            mult = config.channel_mult[level]
            for i in range(config.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc, ops)]
                ch = mult * mc
                depth = config.transformer_depth_output[out_index]
                if depth > 0:
                    layers.append(transformer(ch, depth))
                if level and i == config.num_res_blocks[level]:
                    layers.append(Upsample(ch, ops))
                self.output_blocks.append(Block(layers))
                out_index += 1

        self.out = nn.Sequential(
            _norm(ch, ops=ops), nn.SiLU(), ops.Conv2d(ch, config.out_channels, 3, padding=1)
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        return self.input_blocks[0][0].weight.dtype

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
        """Predict noise (or v) for latents ``x`` at ``timesteps`` given text ``context`` / ADM ``y``.

        ``transformer_options`` carries the reference's patches (see :class:`TransformerBlock` and
        :meth:`_forward`) and ``wrappers``: ``WrappersMP.DIFFUSION_MODEL`` wrappers surround the
        whole call as ``wrapper(executor, x, timesteps, context, y, control, transformer_options)``.
        """
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
        """The network itself. Block patches from ``transformer_options["patches"]``, as the reference
        applies them: ``emb_patch`` ``(emb, model_channels, options) -> emb``; ``input_block_patch``
        ``(h, options) -> h`` after each input block, ``input_block_patch_after_skip`` after its skip
        is kept; ``middle_block_patch`` ``(h, options) -> h``; ``output_block_patch``
        ``(h, hsp, options) -> (h, hsp)`` before each output block. ``options["block"]`` is
        ``("input" | "middle" | "output", number)`` while a block runs."""
        if timesteps is None:
            raise ValueError("the UNet needs timesteps")
        options: Options = {} if transformer_options is None else transformer_options
        options["original_shape"] = list(x.shape)
        options["transformer_index"] = 0
        patches: Mapping[str, list[Any]] = options.get("patches", {})
        dtype = self.dtype
        out_dtype = x.dtype
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        for patch in patches.get("emb_patch", ()):
            emb = patch(emb, self.config.model_channels, options)
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError("this UNet needs the ADM vector y (SDXL size / crop conditioning)")
            emb = emb + self.label_emb(y.to(dtype))
        ctx = None if context is None else context.to(dtype)
        h = x.to(dtype)
        skips: list[torch.Tensor] = []
        for number, block in enumerate(self.input_blocks):
            options["block"] = ("input", number)
            h = block(h, emb, ctx, options)
            h = apply_control(h, control, "input")
            for patch in patches.get("input_block_patch", ()):
                h = patch(h, options)
            skips.append(h)
            for patch in patches.get("input_block_patch_after_skip", ()):
                h = patch(h, options)
        options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, ctx, options)
        h = apply_control(h, control, "middle")
        for patch in patches.get("middle_block_patch", ()):
            h = patch(h, options)
        for number, block in enumerate(self.output_blocks):
            options["block"] = ("output", number)
            skip = apply_control(skips.pop(), control, "output")
            for patch in patches.get("output_block_patch", ()):
                h, skip = patch(h, skip, options)
            h = torch.cat([h, skip], dim=1)
            output_shape = skips[-1].shape if skips else None
            h = block(h, emb, ctx, options, output_shape)
        return self.out(h).to(out_dtype)


# The reference's names for the same layers, for code that walks the network by class.
CrossAttention = Attention
BasicTransformerBlock = TransformerBlock
TimestepEmbedSequential = Block


_INPUT_RE = re.compile(r"^input_blocks\.(\d+)\.")
_OUTPUT_RE = re.compile(r"^output_blocks\.(\d+)\.")


def _depth(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    n = 0
    while f"{prefix}transformer_blocks.{n}.norm1.weight" in sd:
        n += 1
    return n


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Read the UNet architecture off un-prefixed ``model.diffusion_model`` weights.

    Raises ``KeyError`` / ``ValueError`` when the tensors do not form such a UNet.
    """
    conv_in = sd["input_blocks.0.0.weight"]
    mc = conv_in.shape[0]
    n_in = 1 + max(int(m.group(1)) for k in sd if (m := _INPUT_RE.match(k)))
    n_out = 1 + max(int(m.group(1)) for k in sd if (m := _OUTPUT_RE.match(k)))

    channel_mult: list[int] = []
    num_res_blocks: list[int] = []
    transformer_depth: list[int] = []
    res_count = 0
    depth = 0
    for i in range(1, n_in):
        if f"input_blocks.{i}.0.op.weight" in sd:
            num_res_blocks.append(res_count)
            transformer_depth.append(depth)
            res_count = depth = 0
            continue
        out_ch = sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        if res_count == 0:
            channel_mult.append(out_ch // mc)
        res_count += 1
        depth = max(depth, _depth(sd, f"input_blocks.{i}.1."))
    num_res_blocks.append(res_count)
    transformer_depth.append(depth)
    if len(num_res_blocks) != len(channel_mult):
        raise ValueError("unexpected input block layout")

    depth_output = tuple(_depth(sd, f"output_blocks.{i}.1.") for i in range(n_out))
    depth_middle = _depth(sd, "middle_block.1.")

    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    to_k = next((v for k, v in sd.items() if k.endswith(".attn2.to_k.weight")), None)
    linear = proj_in is not None and proj_in.ndim == 2
    adm = sd.get("label_emb.0.0.weight")
    return UNetConfig(
        in_channels=conv_in.shape[1],
        out_channels=sd["out.2.weight"].shape[0],
        model_channels=mc,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        transformer_depth_output=depth_output,
        transformer_depth_middle=depth_middle,
        context_dim=None if to_k is None else to_k.shape[1],
        use_linear_in_transformer=linear,
        # SD1 (conv projections) has 8 heads at every width; the linear-projection families
        # (SD2, SDXL) use 64-wide heads.
        num_heads=None if linear else 8,
        num_head_channels=64 if linear else None,
        adm_in_channels=None if adm is None else adm.shape[1],
    )


def build_unet(
    sd: Mapping[str, torch.Tensor],
    config: UNetConfig | None = None,
    dtype: torch.dtype | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> UNetModel:
    """A UNet with exactly these (un-prefixed) weights; missing or extra tensors are an error.

    With our layers every weight is cast to ``dtype`` (default: the first conv's). With a
    caller's ``operations`` the layers keep what they load (a quantized tensor stays quantized);
    plain floating-point weights are cast to ``weight_dtype`` (default ``dtype``) and the
    network computes in ``dtype`` (default: float32, or the dtype of the plain weights).
    """
    config = config or config_from_state_dict(sd)
    if is_default(operations):
        with torch.device("meta"):
            model = UNetModel(config)
        load_into(model, sd, None)
        # Files sometimes mix precisions (fp16 weights, fp32 norms); one dtype keeps every op legal.
        model.to(dtype or sd["input_blocks.0.0.weight"].dtype)
        return model.eval().requires_grad_(False)
    compute = dtype or _plain_dtype(sd) or torch.float32
    with torch.device("meta"):
        model = UNetModel(config, operations, compute)
    load_into(model, sd, operations)
    cast_plain_weights(model, weight_dtype or compute)
    return model.eval().requires_grad_(False)


def _plain_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype of the first plain floating-point tensor (not a pack's tensor subclass)."""
    for value in sd.values():
        if type(value) is torch.Tensor and value.is_floating_point():
            return value.dtype
    return None
