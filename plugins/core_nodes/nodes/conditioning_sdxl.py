"""The SDXL text-encode nodes (the reference's ``comfy_extras.nodes_clip_sdxl``).

SDXL's UNet takes, besides the text, an "ADM" vector built from the pooled text embedding and
the image size, crop and target size (the refiner: an aesthetic score instead of the target).
These nodes put those numbers in the conditioning options; the model reads them when it samples
(``models/model_base.py``), defaulting to the latent's size when a plain CLIPTextEncode gave none.
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode

Conditioning = list[list[Any]]
Tokens = dict[str, list[Any]]

_MODULE = "comfy_extras.nodes_clip_sdxl"
_CATEGORY = "model/conditioning/stable diffusion"


def _size(default: int, advanced: bool = False) -> tuple[str, dict[str, Any]]:
    """An image-size widget (a fresh dict each call: the server may annotate it)."""
    options: dict[str, Any] = {"default": default, "min": 0, "max": MAX_RESOLUTION}
    if advanced:
        options = {"advanced": True, **options}
    return ("INT", options)


# Inputs are written as the reference's schema-based nodes publish them (``("CLIP", {})`` and the
# like), so /object_info matches the reference's entry exactly.


def _prompt() -> tuple[str, dict[str, Any]]:
    return ("STRING", {"multiline": True, "dynamicPrompts": True})


def _require_clip(clip: Any, node: str) -> None:
    if clip is None:
        raise RuntimeError(
            f"{node}: clip input is invalid: None. A checkpoint without a text encoder gives no CLIP; "
            "load one with CLIPLoader or DualCLIPLoader."
        )


def pair_sdxl_tokens(clip: Any, text_g: str, text_l: str) -> Tokens:
    """Tokens with ``text_g`` for clip_g and ``text_l`` for clip_l, the shorter side padded with
    empty-prompt chunks until both have as many 77-token chunks (each encoder's chunks are
    concatenated along the sequence, so both must give the same length)."""
    tokens = dict(clip.tokenize(text_g))
    if "g" not in tokens or "l" not in tokens:
        raise ValueError(
            "CLIPTextEncodeSDXL needs an SDXL CLIP with clip_g and clip_l; this CLIP has "
            f"{sorted(tokens)} (use CLIPTextEncode, or load SDXL's two text encoders)"
        )
    g = list(tokens["g"])
    l_ = list(clip.tokenize(text_l)["l"])
    if len(g) != len(l_):
        empty = clip.tokenize("")
        while len(l_) < len(g):
            l_ += empty["l"]
        while len(g) < len(l_):
            g += empty["g"]
    tokens["g"], tokens["l"] = g, l_
    return tokens


class CLIPTextEncodeSDXL(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = _CATEGORY
    RELATIVE_PYTHON_MODULE = _MODULE
    DESCRIPTION = "SDXL conditioning: text_g through clip_g, text_l through clip_l, with size and crop."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP", {}),
                "width": _size(1024),
                "height": _size(1024),
                "crop_w": _size(0, advanced=True),
                "crop_h": _size(0, advanced=True),
                "target_width": _size(1024),
                "target_height": _size(1024),
                "text_g": _prompt(),
                "text_l": _prompt(),
            }
        }

    def encode(
        self,
        clip: Any,
        width: int,
        height: int,
        crop_w: int,
        crop_h: int,
        target_width: int,
        target_height: int,
        text_g: str,
        text_l: str,
    ) -> tuple[Conditioning]:
        _require_clip(clip, "CLIPTextEncodeSDXL")
        tokens = pair_sdxl_tokens(clip, text_g, text_l)
        sizes = {
            "width": width,
            "height": height,
            "crop_w": crop_w,
            "crop_h": crop_h,
            "target_width": target_width,
            "target_height": target_height,
        }
        return (clip.encode_from_tokens_scheduled(tokens, add_dict=sizes),)


class CLIPTextEncodeSDXLRefiner(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = _CATEGORY
    RELATIVE_PYTHON_MODULE = _MODULE
    DESCRIPTION = "SDXL refiner conditioning: the prompt with an aesthetic score and the image size."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
                "width": _size(1024),
                "height": _size(1024),
                "text": _prompt(),
                "clip": ("CLIP", {}),
            }
        }

    def encode(self, clip: Any, ascore: float, width: int, height: int, text: str) -> tuple[Conditioning]:
        _require_clip(clip, "CLIPTextEncodeSDXLRefiner")
        tokens = clip.tokenize(text)
        extra = {"aesthetic_score": ascore, "width": width, "height": height}
        return (clip.encode_from_tokens_scheduled(tokens, add_dict=extra),)


NODES: dict[str, tuple[type, str | None]] = {
    "CLIPTextEncodeSDXL": (CLIPTextEncodeSDXL, "CLIP Text Encode (SDXL)"),
    "CLIPTextEncodeSDXLRefiner": (CLIPTextEncodeSDXLRefiner, "CLIP Text Encode (SDXL Refiner)"),
}
