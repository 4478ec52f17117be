"""`comfy.ldm.modules.attention`: the attention functions and the UNet's transformer classes.

``optimized_attention`` is read by the server's UNet on every attention call, so a pack that
assigns its own function here (``attention.optimized_attention = mine``, with the reference's
signature ``(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
skip_output_reshape=False)``, ``[B, N, heads * dim]`` in and out) changes our sampling from then
on; ``optimized_attention_masked`` likewise for masked calls. The classes are the server's own
layers under the reference's names (packs walk ``model.model.diffusion_model`` by class); their
parameter names follow the single-file checkpoint layout.
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.models.attention import (
    AttentionFunction,
    attention_basic,
    attention_pytorch,
    attention_split,
    attention_sub_quad,
)
from plugins.core_nodes.models.unet import (
    GEGLU,
    Attention,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    SpatialTransformer,
    TransformerBlock,
)

# Process globals by the reference's module API: packs replace them by assignment.
optimized_attention: AttentionFunction = attention_pytorch
optimized_attention_masked: AttentionFunction = attention_pytorch
# The reference's forced attention precision (None: the inputs' own).
_ATTN_PRECISION: Any = None


def attention_xformers(*args: Any, **kwargs: Any) -> Any:
    """The reference's xformers variant; xformers is not used here, so the same numbers as
    :func:`attention_pytorch`."""
    return attention_pytorch(*args, **kwargs)


class SpatialVideoTransformer(SpatialTransformer):
    """The reference's video (SVD) transformer, by name for ``isinstance`` checks: this server
    builds no video models."""


def optimized_attention_for_device(device: Any = None, mask: bool = False, small_input: bool = False) -> AttentionFunction:
    """The attention function for ``device`` (one implementation here: PyTorch's)."""
    return attention_pytorch


def exists(val: Any) -> bool:
    return val is not None


def default(val: Any, d: Any) -> Any:
    if exists(val):
        return val
    return d


__all__ = [
    "GEGLU",
    "Attention",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "SpatialTransformer",
    "SpatialVideoTransformer",
    "TransformerBlock",
    "attention_basic",
    "attention_pytorch",
    "attention_split",
    "attention_sub_quad",
    "attention_xformers",
    "default",
    "exists",
    "optimized_attention",
    "optimized_attention_for_device",
    "optimized_attention_masked",
]
