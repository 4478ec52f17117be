"""CLIPVisionLoader and CLIPVisionEncode: CLIP image encoders from ``models/clip_vision``.

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


NODES: dict[str, tuple[type, str | None]] = {
    "CLIPVisionLoader": (CLIPVisionLoader, "Load CLIP Vision"),
    "CLIPVisionEncode": (CLIPVisionEncode, "CLIP Vision Encode"),
}
