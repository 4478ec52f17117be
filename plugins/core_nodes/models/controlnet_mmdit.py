"""The ControlNet of SD3 / SD3.5: a shortened MMDiT that reads the hint latent and gives one
residual per joint block of the main model.

The files in circulation (InstantX's and others' SD3 ControlNets) are diffusers
``SD3ControlNetModel`` state dicts: ``pos_embed``, ``time_text_embed``, ``context_embedder``,
``transformer_blocks.N`` with separate q / k / v, plus the ControlNet's own
``pos_embed_input.proj`` (a patch embedding of the VAE-encoded hint, added to the image tokens)
and ``controlnet_blocks.N`` (one linear per block, applied to the image tokens after it). They are
renamed here to the MMDiT's single-file names (:mod:`.mmdit`), fusing q / k / v, so the blocks
are the main model's own code.

Unlike the main model, no block is "pre-only" (there is no final layer) and the pooled text is
replaced by zeros, as the reference and diffusers' pipeline do for these ControlNets. The main
model has ``hidden / 64`` blocks (the reference's rule); with ``n`` ControlNet blocks each
ControlNet residual is repeated ``depth // n`` times, the last one once less, since the main
model's pre-only last block takes none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models.lora_fused import rename_to_fused
from plugins.core_nodes.models.lora_sd3 import diffusers_targets
from plugins.core_nodes.models.mmdit import (
    FREQUENCY_DIM,
    HEAD_WIDTH,
    JointBlock,
    MMDiTConfig,
    PatchEmbed,
    _Embedder,
)
from plugins.core_nodes.models.operations import TorchOperations, build_exactly
from plugins.core_nodes.models.unet import timestep_embedding

__all__ = ["MMDiTControlNet", "build_mmdit_controlnet", "is_mmdit_controlnet", "to_single_file"]

_BLOCK_RE = re.compile(r"^(?:joint|transformer)_blocks\.(\d+)\.")
_ATTN2_RE = re.compile(r"^joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")


class MMDiTControlNetError(ValueError):
    """The weights do not form an SD3 ControlNet this server can build."""


def is_mmdit_controlnet(sd: Mapping[str, Any]) -> bool:
    """SD3 ControlNet weights (diffusers' layout or ours). Stability's SD3.5 ControlNets (their
    own block layout, ``transformer_blocks.N.adaLN_modulation``) are a different network."""
    return (
        "controlnet_blocks.0.weight" in sd
        and "pos_embed_input.proj.weight" in sd
        and "transformer_blocks.0.adaLN_modulation.1.bias" not in sd
    )


def _blocks(sd: Mapping[str, Any]) -> int:
    found = [int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))]
    if not found:
        raise MMDiTControlNetError("SD3 ControlNet weights without transformer blocks")
    return 1 + max(found)


def to_single_file(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``SD3ControlNetModel`` weights renamed to the MMDiT's single-file names (q, k, v
    fused); weights already in those names come back as they are."""
    if "transformer_blocks.0.attn.to_q.weight" not in sd:
        return dict(sd)
    hidden = int(sd["pos_embed.proj.weight"].shape[0])
    blocks = _blocks(sd)
    targets = diffusers_targets(MMDiTConfig(hidden_size=hidden, depth=blocks, num_heads=max(1, hidden // HEAD_WIDTH)))
    # The ControlNet's own layers (``controlnet_blocks``, ``pos_embed_input``) keep their names.
    return rename_to_fused(sd, targets, {"pos_embed.pos_embed": "pos_embed"})


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[MMDiTConfig, int, int]:
    """(block config, ControlNet blocks, hint channels) of single-file-named weights."""
    try:
        proj = sd["x_embedder.proj.weight"]
        hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
        pos = sd.get("pos_embed")
        adm = sd.get("y_embedder.mlp.0.weight")
        context = sd.get("context_embedder.weight")
        if "joint_blocks.0.x_block.attn.ln_q.weight" in sd:
            qk_norm: str | None = "ln" if "joint_blocks.0.x_block.attn.ln_q.bias" in sd else "rms"
        else:
            qk_norm = None
        config = MMDiTConfig(
            hidden_size=hidden,
            depth=hidden // HEAD_WIDTH,
            num_heads=max(1, hidden // HEAD_WIDTH),
            in_channels=in_channels,
            out_channels=in_channels,
            patch_size=patch,
            mlp_hidden=int(sd["joint_blocks.0.x_block.mlp.fc1.weight"].shape[0]),
            adm_in_channels=None if adm is None else int(adm.shape[1]),
            context_in_dim=None if context is None else int(context.shape[1]),
            pos_embed_max_size=round(math.sqrt(pos.shape[1])) if pos is not None else 192,
            qk_norm=qk_norm,
            x_block_self_attn_layers=tuple(sorted(int(m.group(1)) for k in sd if (m := _ATTN2_RE.match(k)))),
        )
        hint_channels = int(sd["pos_embed_input.proj.weight"].shape[1])
    except KeyError as exc:
        raise MMDiTControlNetError(f"not SD3 ControlNet weights (missing {exc})") from None
    return config, _blocks(sd), hint_channels


class MMDiTControlNet(nn.Module):
    """``forward(x, hint, timesteps, context, y=None)`` -> ``{"output": [...]}``: the residual
    added to the main model's image tokens after each of its joint blocks."""

    def __init__(self, config: MMDiTConfig, blocks: int, hint_channels: int) -> None:
        super().__init__()
        self.config = config
        ops = TorchOperations
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config, ops)
        self.pos_embed_input = PatchEmbed(replace(config, in_channels=hint_channels), ops)
        self.t_embedder = _Embedder(FREQUENCY_DIM, dim, ops)
        self.y_embedder = _Embedder(config.adm_in_channels, dim, ops) if config.adm_in_channels else None
        self.context_embedder: nn.Module = (
            nn.Linear(config.context_in_dim, dim) if config.context_in_dim else nn.Identity()
        )
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, dim))
        self.joint_blocks = nn.ModuleList(
            JointBlock(config, False, i in config.x_block_self_attn_layers, ops)
            for i in range(blocks)
        )
        self.controlnet_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(blocks))

    @property
    def dtype(self) -> torch.dtype:
        return self.controlnet_blocks[0].weight.dtype

    def _pos(self, height: int, width: int) -> torch.Tensor:
        p, size = self.config.patch_size, self.config.pos_embed_max_size
        h, w = (height + 1) // p, (width + 1) // p
        if h > size or w > size:
            raise ValueError(f"a latent of {height}x{width} is larger than this ControlNet's {size}x{size} positions")
        top, left = (size - h) // 2, (size - w) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top : top + h, left : left + w, :]
        return table.reshape(1, h * w, -1)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, list[torch.Tensor | None]]:
        if context is None:
            raise ValueError("the SD3 ControlNet needs text tokens (context)")
        dtype = self.dtype
        height, width = x.shape[-2:]
        tokens = self.x_embedder(self._patches(x.to(dtype))) + self._pos(height, width).to(x.device, dtype)
        tokens = tokens + self.pos_embed_input(self._patches(hint.to(dtype)))
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        c = self.t_embedder(timestep_embedding(timesteps, FREQUENCY_DIM).to(dtype))
        if self.y_embedder is not None:
            # These ControlNets were trained with the pooled text zeroed.
            pooled = torch.zeros(x.shape[0], self.config.adm_in_channels or 0, device=x.device, dtype=dtype)
            c = c + self.y_embedder(pooled)
        ctx: torch.Tensor | None = self.context_embedder(context.to(dtype))
        blocks = len(self.joint_blocks)
        per_block = self.config.depth // blocks
        outputs: list[torch.Tensor | None] = []
        for i, (block, out_proj) in enumerate(zip(self.joint_blocks, self.controlnet_blocks, strict=True)):
            assert ctx is not None
            ctx, tokens = block(ctx, tokens, c)
            residual = out_proj(tokens)
            # The same tensor listed several times: control_merge scales it once.
            outputs += [residual] * (per_block - (1 if i == blocks - 1 else 0))
        return {"output": outputs}


def build_mmdit_controlnet(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> MMDiTControlNet:
    """The SD3 ControlNet of these weights (diffusers' layout or ours); missing or extra tensors
    are an error."""
    weights = to_single_file(sd)
    config, blocks, hint_channels = config_from_state_dict(weights)
    return build_exactly(
        lambda: MMDiTControlNet(config, blocks, hint_channels),
        weights,
        dtype or weights["controlnet_blocks.0.weight"].dtype,
        lambda why: MMDiTControlNetError(f"SD3 ControlNet weights do not fit the network read off them: {why}"),
    )
