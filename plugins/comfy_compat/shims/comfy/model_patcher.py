"""`comfy.model_patcher`: the MODEL object's class and the reference's ``model_options`` helpers.

The MODEL values the loader nodes give are instances of :class:`ModelPatcher` (the server's
``DiffusionModel`` subclasses it), so ``isinstance(model, comfy.model_patcher.ModelPatcher)`` holds.
Packs may also construct and subclass it around their own modules; ``patch_model`` then writes the
patches into that module and ``unpatch_model`` restores it, as in ComfyUI.
"""

from __future__ import annotations

from typing import Any

import torch

from plugins.core_nodes.models.extension import CallbacksMP, PatcherInjection, WrappersMP
from plugins.core_nodes.models.patcher import (
    ModelPatcher,
    create_model_options_clone,
    get_attr,
    set_attr,
    set_model_options_patch_replace,
    set_model_options_post_cfg_function,
    set_model_options_pre_cfg_function,
    wipe_lowvram_weight,
)
from plugins.core_nodes.models.weight_patches import calculate_weight

# Newer ComfyUI names its default patcher class so; packs that probe for it get the same class.
CoreModelPatcher = ModelPatcher


def string_to_seed(data: str | bytes) -> int:
    """The CRC-32 of ``data`` (the reference seeds its stochastic rounding with it per weight key)."""
    crc = 0xFFFFFFFF
    for item in data:
        crc ^= ord(item) if isinstance(item, str) else item
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


class LowVramPatch:
    """A weight's patches as a function of the weight (the reference applies them per call this way)."""

    def __init__(self, key: str, patches: dict[str, list[Any]]) -> None:
        self.key = key
        self.patches = patches

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        merged = calculate_weight(self.patches[self.key], weight.to(torch.float32, copy=True), self.key)
        return merged.to(weight.dtype)


def get_key_weight(model: Any, key: str) -> tuple[Any, None, None]:
    """``(weight, set_func, convert_func)`` for a state-dict key; this server has no custom setters."""
    return get_attr(model, key), None, None


__all__ = [
    "CallbacksMP",
    "CoreModelPatcher",
    "LowVramPatch",
    "PatcherInjection",
    "WrappersMP",
    "ModelPatcher",
    "create_model_options_clone",
    "get_key_weight",
    "set_attr",
    "set_model_options_patch_replace",
    "set_model_options_post_cfg_function",
    "set_model_options_pre_cfg_function",
    "string_to_seed",
    "wipe_lowvram_weight",
]
