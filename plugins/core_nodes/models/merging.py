"""Model and CLIP merging as weight patches, the reference's way.

A merge never builds a new network: the first model is cloned and every weight of the second is
added to the clone as a patch (``add_patches`` with ``get_key_patches`` of the other, see
:mod:`~plugins.core_nodes.models.weight_patches`). An entry ``(strength_patch, other,
strength_model)`` makes the weight ``strength_model * own + strength_patch * other`` when the
MODEL runs (or is saved), so

* a weighted average at ``ratio`` is ``(1 - ratio, other, ratio)``: ``ratio`` of the first model;
* a subtraction is ``(-m, other, m)``: ``m * (own - other)``, the difference times the multiplier;
* an addition is ``(1, other, 1)``.

The other model's own patches (a LoRA on it, an earlier merge) come along: its key patches are
its base weights with their patch lists, merged when the entry is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

UNET_PREFIX = "diffusion_model."
# A CLIP's bookkeeping tensors, not weights: never merged.
_CLIP_SKIPPED = (".position_ids", ".logit_scale")


def block_ratio(key: str, ratios: Mapping[str, float], default: float) -> float:
    """The ratio for UNet key ``key`` (without ``diffusion_model.``): that of the longest name in
    ``ratios`` the key starts with, ``default`` when none matches."""
    found, length = default, 0
    for prefix, ratio in ratios.items():
        if len(prefix) > length and key.startswith(prefix):
            found, length = ratio, len(prefix)
    return found


def merge_models(
    model1: Any, model2: Any, strengths: Callable[[str], tuple[float, float]]
) -> Any:
    """A clone of ``model1`` with each of ``model2``'s UNet weights patched in at
    ``strengths(key) -> (strength_patch, strength_model)`` (``key`` without the UNet prefix)."""
    merged = model1.clone()
    for key, patch in model2.get_key_patches(UNET_PREFIX).items():
        strength_patch, strength_model = strengths(key[len(UNET_PREFIX) :])
        merged.add_patches({key: patch}, strength_patch, strength_model)
    return merged


def merge_simple(model1: Any, model2: Any, ratio: float) -> Any:
    """``ratio`` of ``model1`` and ``1 - ratio`` of ``model2``."""
    return merge_models(model1, model2, lambda _key: (1.0 - ratio, ratio))


def merge_subtract(model1: Any, model2: Any, multiplier: float) -> Any:
    """``(model1 - model2) * multiplier``."""
    return merge_models(model1, model2, lambda _key: (-multiplier, multiplier))


def merge_add(model1: Any, model2: Any) -> Any:
    """``model1 + model2``."""
    return merge_models(model1, model2, lambda _key: (1.0, 1.0))


def merge_blocks(model1: Any, model2: Any, ratios: Mapping[str, float]) -> Any:
    """A weighted average per block: each key takes the ratio of the longest block name it starts
    with (:func:`block_ratio`); keys under none take the first ratio given."""
    if not ratios:
        raise ValueError("a block merge needs at least one ratio")
    default = next(iter(ratios.values()))

    def strengths(key: str) -> tuple[float, float]:
        ratio = block_ratio(key, ratios, default)
        return (1.0 - ratio, ratio)

    return merge_models(model1, model2, strengths)


def merge_clips(clip1: Any, clip2: Any, strength_patch: float, strength_model: float) -> Any:
    """A clone of ``clip1`` with ``clip2``'s weights patched in (``position_ids`` and
    ``logit_scale`` are left as ``clip1`` has them)."""
    merged = clip1.clone()
    for key, patch in clip2.get_key_patches().items():
        if key.endswith(_CLIP_SKIPPED):
            continue
        merged.add_patches({key: patch}, strength_patch, strength_model)
    return merged


__all__ = [
    "UNET_PREFIX",
    "block_ratio",
    "merge_add",
    "merge_blocks",
    "merge_clips",
    "merge_models",
    "merge_simple",
    "merge_subtract",
]
