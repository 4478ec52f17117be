"""Attention projections scaled by a factor, as weight patches (the attention-multiply nodes).

A weight patch ``(None,)`` at strength 0 with ``strength_model`` ``f`` multiplies the weight by
``f`` and adds nothing (the reference's formula), so the scaling goes through the same
per-call weight merging as LoRAs and never changes the cached model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Our UNet's projection names under an attention layer, and CLIP's under ``self_attn``.
UNET_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}
CLIP_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}


def scale_projections(
    target: Any, keys: list[str], layer: str, projections: Mapping[str, str], factors: Mapping[str, float]
) -> None:
    """Patch every weight and bias among ``keys`` that belongs to ``<layer>.<projection>`` with
    its factor (``target`` is a MODEL or a CLIP: anything with ``add_patches``)."""
    for key in keys:
        for name, projection in projections.items():
            stem = f"{layer}.{projection}."
            if key.endswith(stem + "weight") or key.endswith(stem + "bias"):
                target.add_patches({key: (None,)}, 0.0, factors[name])


def scale_unet_attention(model: Any, layer: str, factors: Mapping[str, float]) -> Any:
    """A clone of ``model`` with every ``layer`` (``attn1`` / ``attn2``) projection scaled."""
    clone = model.clone()
    scale_projections(clone, list(model.model_state_dict()), layer, UNET_PROJECTIONS, factors)
    return clone


def scale_clip_attention(clip: Any, factors: Mapping[str, float]) -> Any:
    """A clone of ``clip`` with every text-encoder self-attention projection scaled."""
    clone = clip.clone()
    scale_projections(clone, list(clone.patcher.model_state_dict()), "self_attn", CLIP_PROJECTIONS, factors)
    return clone


def scale_temporal_outputs(model: Any, factors: Mapping[str, float]) -> Any:
    """A clone of ``model`` with the attention output projections scaled: ``self`` / ``cross``
    (``attn1`` / ``attn2``) by ``structural`` or, inside a video model's ``.time_stack.``,
    ``temporal`` factors (``factors`` keys ``self_structural`` ... ``cross_temporal``)."""
    clone = model.clone()
    for key in model.model_state_dict():
        for layer, kind in (("attn1", "self"), ("attn2", "cross")):
            if key.endswith(f"{layer}.to_out.0.weight") or key.endswith(f"{layer}.to_out.0.bias"):
                where = "temporal" if ".time_stack." in key else "structural"
                clone.add_patches({key: (None,)}, 0.0, factors[f"{kind}_{where}"])
    return clone


__all__ = ["scale_clip_attention", "scale_temporal_outputs", "scale_unet_attention"]
