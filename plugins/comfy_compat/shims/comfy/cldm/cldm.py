"""``comfy.cldm.cldm``: the ControlNet network class packs subclass (SparseCtrl, ControlNet++).

The class keeps the reference's constructor signature and records the configuration attributes
subclasses read (``dims``, ``model_channels``, ``dtype``, ``num_res_blocks``...), then builds the
server's own network (:class:`plugins.core_nodes.models.controlnet.ControlNetModel`: the same
``input_hint_block`` / ``input_blocks`` / ``zero_convs`` / ``middle_block`` / ``middle_block_out``
modules, blocks callable as ``block(h, emb, context)``). ``operations`` and ``device`` are not
used: the layers are plain torch layers, created on the CPU in ``dtype``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import comfy.ops
import torch

from plugins.core_nodes.models.controlnet import ControlNetModel
from plugins.core_nodes.models.unet import UNetConfig


def _per_level(depth: int | Sequence[int], num_res_blocks: Sequence[int]) -> tuple[int, ...]:
    """The reference lists transformer depths per input res-block (or gives one int); our
    config has one depth per level."""
    if isinstance(depth, int):
        return tuple(depth for _ in num_res_blocks)
    depth = list(depth)
    if len(depth) == len(num_res_blocks):
        return tuple(depth)
    out, start = [], 0
    for count in num_res_blocks:
        out.append(max(depth[start : start + count], default=0))
        start += count
    return tuple(out)


class ControlNet(ControlNetModel):
    """The ldm ControlNet (a UNet encoder copy with zero-convolution outputs)."""

    def __init__(
        self,
        image_size: Any = None,
        in_channels: int = 4,
        model_channels: int = 320,
        hint_channels: int = 3,
        num_res_blocks: int | Sequence[int] = 2,
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Any = None,
        use_checkpoint: bool = False,
        dtype: torch.dtype = torch.float32,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int | Sequence[int] = 1,
        context_dim: int | None = None,
        n_embed: Any = None,
        legacy: bool = True,
        disable_self_attentions: Any = None,
        num_attention_blocks: Any = None,
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        transformer_depth_middle: int | None = None,
        transformer_depth_output: Any = None,
        attn_precision: Any = None,
        union_controlnet_num_control_type: int | None = None,
        device: Any = None,
        operations: Any = comfy.ops.disable_weight_init,
        **kwargs: Any,
    ) -> None:
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("Either num_heads or num_head_channels has to be set")
        res_blocks = len(channel_mult) * [num_res_blocks] if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        depth = _per_level(transformer_depth, res_blocks)
        config = UNetConfig(
            in_channels=in_channels,
            out_channels=in_channels,
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=tuple(res_blocks),
            transformer_depth=depth,
            transformer_depth_output=(),
            transformer_depth_middle=depth[-1] if transformer_depth_middle is None else max(transformer_depth_middle, 0),
            context_dim=context_dim,
            use_linear_in_transformer=use_linear_in_transformer,
            num_heads=None if num_head_channels != -1 else num_heads,
            num_head_channels=None if num_head_channels == -1 else num_head_channels,
            adm_in_channels=adm_in_channels if num_classes is not None else None,
        )
        super().__init__(config, hint_channels)
        self.dims = dims
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_res_blocks = res_blocks
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.predict_codebook_ids = n_embed is not None
        self.num_control_type = union_controlnet_num_control_type
        self.to(dtype)
