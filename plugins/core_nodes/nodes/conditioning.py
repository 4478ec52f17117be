"""Text encoding and the CONDITIONING nodes (areas, masks, strength, timestep ranges, mixing).

A CONDITIONING is a list of ``[tensor [1, T, C], options]`` pairs. Nodes never mutate their
inputs (cached outputs may be shared): they copy each options dict before setting keys.
"""

from __future__ import annotations

import logging
from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode

log = logging.getLogger("comfykernel.core_nodes")

Conditioning = list[list[Any]]


def set_values(conditioning: Conditioning, values: dict[str, Any]) -> Conditioning:
    """A copy of ``conditioning`` whose options carry ``values``."""
    return [[tensor, {**options, **values}] for tensor, options in conditioning]


def _strength_input() -> tuple[str, dict[str, Any]]:
    """The 0-10 strength widget of the area and mask nodes (a fresh dict each time: callers may edit it)."""
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


def _first_entry(conditioning_from: Conditioning, node: str) -> list[Any]:
    """The one ``conditioning_from`` entry the mixing nodes use (a warning when more were given)."""
    if len(conditioning_from) > 1:
        log.warning("%s: only the first entry of conditioning_from is used", node)
    return conditioning_from[0]


class _Cond(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    CATEGORY = "model/conditioning/transform"


class CLIPTextEncode(_Cond):
    FUNCTION = "encode"
    CATEGORY = "model/conditioning"
    DESCRIPTION = "Turns a prompt into conditioning with a CLIP text encoder."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                "clip": ("CLIP",),
            }
        }

    def encode(self, clip: Any, text: str) -> tuple[Conditioning]:
        if clip is None:
            raise RuntimeError(
                "clip input is invalid: None. A checkpoint without a text encoder gives no CLIP; "
                "load one with CLIPLoader."
            )
        scheduled = getattr(clip, "encode_from_tokens_scheduled", None)
        if callable(scheduled):
            # The reference's path: hooks set on the CLIP (SetClipHooks) schedule and tag the conds.
            return (scheduled(clip.tokenize(text)),)
        cond, pooled = clip.encode(text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(CoreNode):
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "model/conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP",),
                "stop_at_clip_layer": (
                    "INT",
                    {"default": -1, "min": -24, "max": -1, "step": 1, "advanced": True},
                ),
            }
        }

    def set_last_layer(self, clip: Any, stop_at_clip_layer: int) -> tuple[Any]:
        return (clip.with_last_layer(stop_at_clip_layer),)


class ConditioningCombine(_Cond):
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    def combine(self, conditioning_1: Conditioning, conditioning_2: Conditioning) -> tuple[Conditioning]:
        return (conditioning_1 + conditioning_2,)


class ConditioningAverage(_Cond):
    FUNCTION = "addWeighted"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning_to": ("CONDITIONING",),
                "conditioning_from": ("CONDITIONING",),
                "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def addWeighted(  # noqa: N802 - the reference's FUNCTION name
        self, conditioning_to: Conditioning, conditioning_from: Conditioning, conditioning_to_strength: float
    ) -> tuple[Conditioning]:
        import torch

        first = _first_entry(conditioning_from, "ConditioningAverage")
        source = first[0]
        source_pooled = first[1].get("pooled_output")
        w = float(conditioning_to_strength)
        out: Conditioning = []
        for target, options in conditioning_to:
            # Match the target's token length: cut the source, or pad it with zeros.
            mixed_from = source[:, : target.shape[1]]
            if mixed_from.shape[1] < target.shape[1]:
                pad = torch.zeros(
                    (mixed_from.shape[0], target.shape[1] - mixed_from.shape[1], target.shape[2]),
                    dtype=target.dtype,
                )
                mixed_from = torch.cat([mixed_from, pad], dim=1)
            new_options = dict(options)
            target_pooled = options.get("pooled_output", source_pooled)
            if source_pooled is not None and target_pooled is not None:
                new_options["pooled_output"] = target_pooled * w + source_pooled * (1.0 - w)
            elif source_pooled is not None:
                new_options["pooled_output"] = source_pooled
            out.append([target * w + mixed_from * (1.0 - w), new_options])
        return (out,)


class ConditioningConcat(_Cond):
    FUNCTION = "concat"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    def concat(self, conditioning_to: Conditioning, conditioning_from: Conditioning) -> tuple[Conditioning]:
        import torch

        source = _first_entry(conditioning_from, "ConditioningConcat")[0]
        return ([[torch.cat((t, source), 1), dict(o)] for t, o in conditioning_to],)


class ConditioningSetArea(_Cond):
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}
        pos = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "x": ("INT", dict(pos)),
                "y": ("INT", dict(pos)),
                "strength": _strength_input(),
            }
        }

    def append(
        self, conditioning: Conditioning, width: int, height: int, x: int, y: int, strength: float
    ) -> tuple[Conditioning]:
        # Areas are stored in latent pixels (1/8 of image pixels), as the reference stores them.
        area = (height // 8, width // 8, y // 8, x // 8)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(_Cond):
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def frac(default: float) -> tuple[str, dict[str, Any]]:
            return ("FLOAT", {"default": default, "min": 0, "max": 1.0, "step": 0.01})

        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "width": frac(1.0),
                "height": frac(1.0),
                "x": frac(0),
                "y": frac(0),
                "strength": _strength_input(),
            }
        }

    def append(
        self, conditioning: Conditioning, width: float, height: float, x: float, y: float, strength: float
    ) -> tuple[Conditioning]:
        area = ("percentage", height, width, y, x)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength(_Cond):
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "strength": _strength_input(),
            }
        }

    def append(self, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
        return (set_values(conditioning, {"strength": strength}),)


class ConditioningSetMask(_Cond):
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "mask": ("MASK",),
                "strength": _strength_input(),
                "set_cond_area": (["default", "mask bounds"],),
            }
        }

    def append(
        self, conditioning: Conditioning, mask: Any, set_cond_area: str, strength: float
    ) -> tuple[Conditioning]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
        return (set_values(conditioning, values),)


class ConditioningZeroOut(_Cond):
    FUNCTION = "zero_out"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    def zero_out(self, conditioning: Conditioning) -> tuple[Conditioning]:
        import torch

        out: Conditioning = []
        for tensor, options in conditioning:
            new_options = dict(options)
            if new_options.get("pooled_output") is not None:
                new_options["pooled_output"] = torch.zeros_like(new_options["pooled_output"])
            out.append([torch.zeros_like(tensor), new_options])
        return (out,)


class ConditioningSetTimestepRange(_Cond):
    FUNCTION = "set_range"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            }
        }

    def set_range(self, conditioning: Conditioning, start: float, end: float) -> tuple[Conditioning]:
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


class InpaintModelConditioning(CoreNode):
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "model/conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "vae": ("VAE",),
                "pixels": ("IMAGE",),
                "mask": ("MASK",),
                "noise_mask": ("BOOLEAN", {"default": True}),
            }
        }

    def encode(
        self, positive: Conditioning, negative: Conditioning, pixels: Any, vae: Any, mask: Any,
        noise_mask: bool = True,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:  # fmt: skip
        from plugins.core_nodes.nodes.latent import crop_to_multiple, grey_out, mask_to_pixels

        ratio = int(getattr(vae, "downscale_ratio", 8))
        mask = mask_to_pixels(mask, pixels.shape[1], pixels.shape[2])
        original = crop_to_multiple(pixels, ratio)
        mask = crop_to_multiple(mask.movedim(1, -1), ratio).movedim(-1, 1)
        concat_latent = vae.encode(grey_out(original[..., :3], mask))
        latent: dict[str, Any] = {"samples": vae.encode(original[..., :3])}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return (set_values(positive, values), set_values(negative, values), latent)


class ConditioningMultiply(_Cond):
    """Scales every entry's text embedding and its pooled output by ``multiplier``."""

    FUNCTION = "multiply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "multiplier": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    def multiply(self, conditioning: Conditioning, multiplier: float) -> tuple[Conditioning]:
        out: Conditioning = []
        for tensor, options in conditioning:
            new_options = dict(options)
            if new_options.get("pooled_output") is not None:
                new_options["pooled_output"] = new_options["pooled_output"] * multiplier
            out.append([tensor * multiplier, new_options])
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "CLIPTextEncode": (CLIPTextEncode, "CLIP Text Encode (Prompt)"),
    "CLIPSetLastLayer": (CLIPSetLastLayer, "CLIP Set Last Layer"),
    "ConditioningCombine": (ConditioningCombine, "Conditioning (Combine)"),
    "ConditioningAverage": (ConditioningAverage, "Conditioning (Average)"),
    "ConditioningConcat": (ConditioningConcat, "Conditioning (Concat)"),
    "ConditioningSetArea": (ConditioningSetArea, "Conditioning (Set Area)"),
    "ConditioningSetAreaPercentage": (
        ConditioningSetAreaPercentage,
        "Conditioning (Set Area with Percentage)",
    ),
    "ConditioningSetAreaStrength": (ConditioningSetAreaStrength, "Conditioning (Set Area Strength)"),
    "ConditioningSetMask": (ConditioningSetMask, "Conditioning (Set Mask)"),
    "ConditioningZeroOut": (ConditioningZeroOut, "Conditioning Zero Out"),
    "ConditioningSetTimestepRange": (ConditioningSetTimestepRange, None),
    "InpaintModelConditioning": (InpaintModelConditioning, None),
    "ConditioningMultiply": (ConditioningMultiply, "Conditioning (Multiply)"),
}
