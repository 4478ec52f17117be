"""A LoRA state dict read into weight patches for the model a weight hook is registered on.

The reference reads a hook's LoRA only when the hook lands on a model (``need_weight_init``),
with that model's key map, silently leaving out keys that name none of its layers. Here the
server's own LoRA reader does the reading (every format ``LoraLoader`` knows), and the changes
are keyed by the model's state-dict keys: ``diffusion_model.<param>`` for a MODEL,
``clip_<encoder>.transformer.text_model.<param>`` for a CLIP's patcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from plugins.core_nodes.models.clip_objects import member_attr
from plugins.core_nodes.models.lora import Delta, read_deltas, resolve


def lora_patches_for(patcher: Any, lora: Mapping[str, torch.Tensor], clip: bool) -> dict[str, Delta]:
    """``lora``'s changes for ``patcher``'s model (a MODEL's UNet or a CLIP patcher's encoders)."""
    if not lora:
        return {}
    deltas = read_deltas(lora)
    inner = getattr(patcher, "model", None)
    if clip:
        encoders = getattr(inner, "models", None)
        if not isinstance(encoders, Mapping) or not encoders:
            return {}
        found = resolve(deltas, None, encoders)
        return {
            f"{member_attr(encoder)}.transformer.text_model.{param}": delta
            for encoder, changes in found.text.items()
            for param, delta in changes.items()
        }
    unet = getattr(inner, "diffusion_model", None)
    if unet is None:
        return {}
    found = resolve(deltas, unet, {})
    return {f"diffusion_model.{param}": delta for param, delta in found.unet.items()}


__all__ = ["lora_patches_for"]
