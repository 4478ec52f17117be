"""`comfy.lora`: LoRA files as weight patches in ComfyUI's formats, and how patches merge.

:func:`load_lora` reads every format the server's LoRA loader knows (kohya, diffusers / PEFT,
LyCORIS LoCon / LoHa / LoKr, full ``diff`` / ``diff_b``, DoRA scales) and answers in the reference's
patch values (``("lora", (up, down, alpha, mid, dora_scale, reshape))``, ``("loha", ...)``,
``("lokr", ...)``, ``("diff", (tensor,))``) keyed by the model keys ``to_load`` maps to; a MODEL's
``add_patches`` takes them. :func:`model_lora_keys_unet` / :func:`model_lora_keys_clip` give that
map for our models. :func:`calculate_weight` merges patch entries into a weight.
Not read: ``set_weight`` / ``reshape_weight`` / ``w_norm`` / ``b_norm`` / GLoRA keys (listed as
not loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from plugins.core_nodes.models.clip_objects import member_attr
from plugins.core_nodes.models.lora import read_deltas, text_key_map, transformer_lora_maps, unet_key_map
from plugins.core_nodes.models.weight_patches import calculate_weight, reference_from_delta

log = logging.getLogger("comfykernel.compat")

# The reference's table of CLIP layer names in kohya keys.
LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def _model_key(target: Any) -> str:
    return target if isinstance(target, str) else target[0]


def load_lora(lora: Mapping[str, torch.Tensor], to_load: Mapping[str, Any], log_missing: bool = True) -> dict[Any, Any]:
    """The patches of LoRA weights ``lora`` for the modules ``to_load`` names (LoRA module key ->
    model key, or ``(model key, offset)``): ``{model key: patch value}``."""
    deltas = read_deltas(lora)
    patches: dict[Any, Any] = {}
    used: set[str] = set()
    for module_key, target in to_load.items():
        delta = deltas.get(module_key)
        if delta is not None:
            patches[target] = reference_from_delta(delta)
            used.add(module_key)
        bias = deltas.get(module_key + ".bias")
        model_key = _model_key(target)
        if bias is not None and model_key.endswith(".weight"):
            patches[model_key[: -len(".weight")] + ".bias"] = ("diff", (bias.tensors[0],))
            used.add(module_key + ".bias")
    if log_missing:
        # A used module's tensors all start with its key (``<module>.lora_up.weight``, ``<module>.alpha``).
        for key in lora:
            if not any(key.startswith(m) for m in used):
                log.warning("lora key not loaded: %s", key)
    return patches


def model_lora_keys_unet(model: Any, key_map: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoRA module keys -> the model's state-dict keys (``diffusion_model.<name>.weight``) for
    ``model`` (a MODEL's ``.model``), under every naming the server's LoRA loader knows."""
    key_map = {} if key_map is None else key_map
    unet = getattr(model, "diffusion_model", None)
    if unet is None:
        return key_map
    for name, _ in unet.named_parameters():
        if not name.endswith(".weight"):
            key_map["diffusion_model." + name] = "diffusion_model." + name
    for lora_key, module in unet_key_map(unet).items():
        target = f"diffusion_model.{module}.weight"
        key_map[lora_key] = target
        if lora_key.startswith("lora_unet_"):
            key_map["lycoris_" + lora_key[len("lora_unet_") :]] = target
    maps = transformer_lora_maps(unet)
    if maps is not None:
        # diffusers' q / k / v name rows of our fused weights (Flux, SD3): the reference's (key,
        # offset) form, and (key, None, function) for a modulation kept (scale, shift) by diffusers.
        for lora_key, block in maps[1].items():
            weight = f"diffusion_model.{block.module}.weight"
            key_map[lora_key] = (weight, None, _swap_halves) if block.swap else (weight, (0, block.start, block.size))
    return key_map


def _swap_halves(change: torch.Tensor) -> torch.Tensor:
    first, second = change.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def model_lora_keys_clip(model: Any, key_map: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoRA module keys -> text-encoder state-dict keys (``clip_l.transformer.text_model.<name>.weight``)
    for a CLIP (or anything with the server's ``models``: encoder name -> module)."""
    key_map = {} if key_map is None else key_map
    encoders = getattr(model, "models", None)
    if not isinstance(encoders, Mapping):
        encoders = getattr(getattr(model, "patcher", None), "models", None)
    if not isinstance(encoders, Mapping):
        return key_map
    for lora_key, (encoder, module) in text_key_map(encoders).items():
        key_map[lora_key] = f"{member_attr(encoder)}.transformer.text_model.{module}.weight"
    return key_map


def pad_tensor_to_shape(tensor: torch.Tensor, new_shape: list[int]) -> torch.Tensor:
    """``tensor`` zero-padded at the end of each dimension to ``new_shape`` (no dimension may shrink)."""
    if len(new_shape) != tensor.dim() or any(n < s for n, s in zip(new_shape, tensor.shape, strict=True)):
        raise ValueError(f"cannot pad a tensor of {tuple(tensor.shape)} to {tuple(new_shape)}")
    out = torch.zeros(new_shape, dtype=tensor.dtype, device=tensor.device)
    out[tuple(slice(0, s) for s in tensor.shape)] = tensor
    return out


__all__ = [
    "LORA_CLIP_MAP",
    "calculate_weight",
    "load_lora",
    "model_lora_keys_clip",
    "model_lora_keys_unet",
    "pad_tensor_to_shape",
]
