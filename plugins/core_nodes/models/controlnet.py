"""The ControlNet network of SD1.x / SD2.x / SDXL: a copy of the UNet's encoder half whose every
block output (and the middle block's) goes through a zero-initialised 1x1 convolution.

Parameter names follow the original single-file layout (``input_hint_block``, ``input_blocks``,
``zero_convs``, ``middle_block``, ``middle_block_out``, ``time_embed``, ``label_emb``), with an
optional ``control_model.`` prefix. Files in diffusers' ``ControlNetModel`` layout
(``controlnet_cond_embedding``, ``down_blocks``, ``controlnet_down_blocks``,
``controlnet_mid_block``) are renamed to it by :func:`from_diffusers`. The blocks are the UNet's
own (:mod:`plugins.core_nodes.models.unet`), so numbers match the UNet's computation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.operations import build_exactly
from plugins.core_nodes.models.unet import (
    Block,
    Downsample,
    ResBlock,
    SpatialTransformer,
    UNetConfig,
    timestep_embedding,
)

PREFIX = "control_model."
# (input channels, output channels, stride) of each convolution of the hint encoder; SiLU between
# them. The last one is zero-initialised in training and maps onto ``model_channels``.
_HINT_CONVS = ((16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2))
_INPUT_RE = re.compile(r"^input_blocks\.(\d+)\.")

Residuals = dict[str, list[torch.Tensor | None]]


class ControlNetError(ValueError):
    """The weights do not form a ControlNet this server can build."""


def _zero_conv(channels: int) -> Block:
    return Block([nn.Conv2d(channels, channels, 1)])


class ControlNetModel(nn.Module):
    """``forward(x, hint, timesteps, context, y=None)`` -> ``{"output": [...], "middle": [m]}``:
    one residual per UNet input block (consumed from the end by the output blocks' skips) and
    one for the middle block, as the reference's ``comfy.cldm.cldm.ControlNet`` returns them."""

    def __init__(self, config: UNetConfig, hint_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        self.hint_channels = hint_channels
        mc = config.model_channels
        emb_dim = mc * 4
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )
        hint: list[nn.Module] = [nn.Conv2d(hint_channels, 16, 3, padding=1), nn.SiLU()]
        for c_in, c_out, stride in _HINT_CONVS:
            hint += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride), nn.SiLU()]
        hint.append(nn.Conv2d(256, mc, 3, padding=1))
        self.input_hint_block = Block(hint)

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, head_dim = config.heads_for(ch)
            return SpatialTransformer(ch, heads, head_dim, depth, config.context_dim, config.use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(config.in_channels, mc, 3, padding=1)])])
        self.zero_convs = nn.ModuleList([_zero_conv(mc)])
        ch = mc
        levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if config.transformer_depth[level] > 0:
                    layers.append(transformer(ch, config.transformer_depth[level]))
                self.input_blocks.append(Block(layers))
                self.zero_convs.append(_zero_conv(ch))
            if level != levels - 1:
                self.input_blocks.append(Block([Downsample(ch)]))
                self.zero_convs.append(_zero_conv(ch))
        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch)]
        if config.transformer_depth_middle > 0:
            middle.append(transformer(ch, config.transformer_depth_middle))
        middle.append(ResBlock(ch, emb_dim, ch))
        self.middle_block = Block(middle)
        self.middle_block_out = _zero_conv(ch)

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Residuals:
        dtype = self.dtype
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        # A fresh options dict per call: the sampler's attention patches belong to the UNet only.
        options: dict[str, Any] = {}
        ctx = None if context is None else context.to(dtype)
        guided_hint: torch.Tensor | None = self.input_hint_block(hint.to(dtype), emb, ctx, options)
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError("this ControlNet needs the ADM vector y (SDXL size / crop conditioning)")
            emb = emb + self.label_emb(y.to(dtype))
        h = x.to(dtype)
        outputs: list[torch.Tensor | None] = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs, strict=True):
            h = block(h, emb, ctx, options)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outputs.append(zero_conv(h, emb, ctx, options))
        h = self.middle_block(h, emb, ctx, options)
        return {"output": outputs, "middle": [self.middle_block_out(h, emb, ctx, options)]}


def _depth(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    n = 0
    while f"{prefix}transformer_blocks.{n}.norm1.weight" in sd:
        n += 1
    return n


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[UNetConfig, int]:
    """(network config, hint channels) read off un-prefixed single-file ControlNet weights."""
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        hint_channels = sd["input_hint_block.0.weight"].shape[1]
        mc = conv_in.shape[0]
        n_in = 1 + max(int(m.group(1)) for k in sd if (m := _INPUT_RE.match(k)))
        channel_mult: list[int] = []
        num_res_blocks: list[int] = []
        transformer_depth: list[int] = []
        res_count = depth = 0
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
    except (KeyError, ValueError) as exc:
        raise ControlNetError(f"not ControlNet weights (missing or malformed {exc})") from None
    if len(num_res_blocks) != len(channel_mult):
        raise ControlNetError("unexpected ControlNet input block layout")
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    to_k = next((v for k, v in sd.items() if k.endswith(".attn2.to_k.weight")), None)
    linear = proj_in is not None and proj_in.ndim == 2
    adm = sd.get("label_emb.0.0.weight")
    config = UNetConfig(
        in_channels=conv_in.shape[1],
        out_channels=conv_in.shape[1],  # unused: a ControlNet has no output half
        model_channels=mc,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        transformer_depth_output=(),
        transformer_depth_middle=_depth(sd, "middle_block.1."),
        context_dim=None if to_k is None else to_k.shape[1],
        use_linear_in_transformer=linear,
        # Same rule as the UNet: SD1's conv projections mean 8 heads, linear ones 64-wide heads.
        num_heads=None if linear else 8,
        num_head_channels=64 if linear else None,
        adm_in_channels=None if adm is None else adm.shape[1],
    )
    return config, hint_channels


def is_diffusers(sd: Mapping[str, Any]) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd


def _diffusers_config(sd: Mapping[str, torch.Tensor]) -> tuple[UNetConfig, int]:
    """The config of a diffusers-layout ControlNet, read off its key names and shapes."""
    conv_in = sd["conv_in.weight"]
    mc = conv_in.shape[0]
    levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("down_blocks."))
    channel_mult, num_res_blocks, transformer_depth = [], [], []
    for level in range(levels):
        channel_mult.append(sd[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0] // mc)
        count = 0
        while f"down_blocks.{level}.resnets.{count}.conv1.weight" in sd:
            count += 1
        num_res_blocks.append(count)
        transformer_depth.append(_depth(sd, f"down_blocks.{level}.attentions.0."))
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    to_k = next((v for k, v in sd.items() if k.endswith(".attn2.to_k.weight")), None)
    linear = proj_in is not None and proj_in.ndim == 2
    adm = sd.get("add_embedding.linear_1.weight")
    config = UNetConfig(
        in_channels=conv_in.shape[1],
        out_channels=conv_in.shape[1],
        model_channels=mc,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        transformer_depth_output=(),
        transformer_depth_middle=_depth(sd, "mid_block.attentions.0."),
        context_dim=None if to_k is None else to_k.shape[1],
        use_linear_in_transformer=linear,
        num_heads=None if linear else 8,
        num_head_channels=64 if linear else None,
        adm_in_channels=None if adm is None else adm.shape[1],
    )
    return config, sd["controlnet_cond_embedding.conv_in.weight"].shape[1]


def from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``ControlNetModel`` weights renamed to the single-file layout."""
    from plugins.core_nodes.models.lora import unet_diffusers_names

    try:
        config, hint_channels = _diffusers_config(sd)
    except (KeyError, ValueError) as exc:
        raise ControlNetError(f"not diffusers ControlNet weights (missing {exc})") from None
    with torch.device("meta"):
        skeleton = ControlNetModel(config, hint_channels)
    ours = [name for name, module in skeleton.named_modules() if isinstance(getattr(module, "weight", None), nn.Parameter)]
    # The name table covers the whole UNet; the output half's depths only need the right length.
    outputs = sum(n + 1 for n in config.num_res_blocks)
    names = unet_diffusers_names(replace(config, transformer_depth_output=(0,) * outputs), ours)
    for i in range(len(skeleton.zero_convs)):
        names[f"zero_convs.{i}.0"] = f"controlnet_down_blocks.{i}"
    names["middle_block_out.0"] = "controlnet_mid_block"
    last = 2 * (len(_HINT_CONVS) + 1)
    names["input_hint_block.0"] = "controlnet_cond_embedding.conv_in"
    for k in range(1, len(_HINT_CONVS) + 1):
        names[f"input_hint_block.{2 * k}"] = f"controlnet_cond_embedding.blocks.{k - 1}"
    names[f"input_hint_block.{last}"] = "controlnet_cond_embedding.conv_out"
    out: dict[str, torch.Tensor] = {}
    for key in skeleton.state_dict():
        module, _, param = key.rpartition(".")
        theirs = f"{names.get(module, module)}.{param}"
        if theirs not in sd:
            raise ControlNetError(f"diffusers ControlNet weights lack {theirs}")
        value = sd[theirs]
        # diffusers may store the transformer projections of conv-projection models as 1x1 convs
        # and vice versa; the skeleton's shape decides.
        expected = skeleton.state_dict()[key].shape
        out[key] = value.reshape(expected) if value.shape != expected and value.numel() == expected.numel() else value
    return out


def normalize(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Un-prefixed single-file ControlNet weights from any supported layout."""
    if is_diffusers(sd):
        return from_diffusers(sd)
    if any(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX) :]: v for k, v in sd.items() if k.startswith(PREFIX)}
    return dict(sd)


def is_controlnet(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` holds ControlNet weights in one of the layouts :func:`normalize` reads."""
    return is_diffusers(sd) or "zero_convs.0.0.weight" in sd or f"{PREFIX}zero_convs.0.0.weight" in sd


def build_controlnet(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> ControlNetModel:
    """A ControlNet with exactly these weights (any layout); missing or extra tensors are an error."""
    weights = normalize(sd)
    config, hint_channels = config_from_state_dict(weights)
    return build_exactly(
        lambda: ControlNetModel(config, hint_channels),
        weights,
        dtype or weights["input_blocks.0.0.weight"].dtype,
        lambda why: ControlNetError(f"ControlNet weights do not fit the network read off them: {why}"),
    )
