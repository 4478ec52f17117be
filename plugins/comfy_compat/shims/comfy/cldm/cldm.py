"""``comfy.cldm.cldm``: the ControlNet network class packs subclass (SparseCtrl, ControlNet++).

The class keeps the reference's constructor signature and records the configuration attributes
subclasses read (``dims``, ``model_channels``, ``dtype``, ``num_res_blocks``...), so pack classes
built on it define and import. Building the network itself is not offered yet: the constructor
ends with ``NotImplementedError`` naming the missing feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import comfy.ops
import torch
from torch import nn

NOT_SUPPORTED = "ControlNet models are not supported by comfykernel yet"


class ControlNet(nn.Module):
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
        super().__init__()
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("Either num_heads or num_head_channels has to be set")
        self.dims = dims
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_res_blocks = (
            len(channel_mult) * [num_res_blocks] if isinstance(num_res_blocks, int) else list(num_res_blocks)
        )
        if len(self.num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = dtype
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.predict_codebook_ids = n_embed is not None
        self.num_control_type = union_controlnet_num_control_type
        raise NotImplementedError(NOT_SUPPORTED)
