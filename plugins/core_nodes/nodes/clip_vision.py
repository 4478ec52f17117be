"""CLIPVisionLoader, CLIPVisionEncode and unCLIPConditioning: CLIP image encoders from
``models/clip_vision`` and their outputs attached to conditioning.

Packs (IP-Adapter, Inspire, Impact) call ``CLIPVisionLoader().load_clip(clip_name=...)`` and
``encode_image(image, crop=...)`` on the result, so the method names are the reference's.
"""

from __future__ import annotations

from typing import Any

from kernel.progress import throw_if_interrupted
from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.loaders import _Loader


class CLIPVisionLoader(_Loader):
    CATEGORY = "model/loaders"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (cls.names("clip_vision"),)}}

    def load_clip(self, clip_name: str) -> tuple[Any]:
        from plugins.core_nodes.models.checkpoint import load_state_dict
        from plugins.core_nodes.models.clip_vision import load_clip_vision

        state_dict, _ = load_state_dict(self.path("clip_vision", clip_name), throw_if_interrupted)
        return (load_clip_vision(state_dict),)


class CLIPVisionEncode(CoreNode):
    CATEGORY = "model/conditioning"
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip_vision": ("CLIP_VISION",),
                "image": ("IMAGE",),
                "crop": (["center", "none"],),
            }
        }

    def encode(self, clip_vision: Any, image: Any, crop: str) -> tuple[Any]:
        return (clip_vision.encode_image(image, crop=crop == "center"),)


class unCLIPConditioning(CoreNode):  # noqa: N801 - the reference's class name
    """Attaches an image embedding to every conditioning entry (``unclip_conditioning``, a list
    that grows with each application). SD2.1 unCLIP checkpoints read it as their ADM input and
    SDXL ones as their pooled vector (both noise-augmented, see ``models/unclip.py``); SD1 / SD2
    models sample as if it were absent, as in the reference."""

    CATEGORY = "model/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_adm"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def apply_adm(
        self, conditioning: list[Any], clip_vision_output: Any, strength: float, noise_augmentation: float
    ) -> tuple[list[Any]]:
        if strength == 0:
            return (conditioning,)
        entry = {
            "clip_vision_output": clip_vision_output,
            "strength": strength,
            "noise_augmentation": noise_augmentation,
        }
        out = []
        for tensor, options in conditioning:
            # New dicts and lists: the input conditioning may feed other nodes too.
            updated = dict(options)
            updated["unclip_conditioning"] = [*options.get("unclip_conditioning", []), entry]
            out.append([tensor, updated])
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "CLIPVisionLoader": (CLIPVisionLoader, "Load CLIP Vision"),
    "CLIPVisionEncode": (CLIPVisionEncode, "CLIP Vision Encode"),
    "unCLIPConditioning": (unCLIPConditioning, None),
}
