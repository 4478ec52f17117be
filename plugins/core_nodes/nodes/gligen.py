"""GLIGEN: the loader and the text-box conditioning (group A).

GLIGENTextBoxApply adds a phrase and its box to every entry of a CONDITIONING, under
``gligen = ("position", GLIGEN, [(pooled, h, w, y, x), ...])`` with sizes in latent pixels (the
reference's layout, which packs read); the sampler turns it into the GLIGEN patch of that
entry's model calls (:func:`plugins.core_nodes.models.gligen.add_cond_patches`).
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.loaders import _Loader


class GLIGENLoader(_Loader):
    RETURN_TYPES = ("GLIGEN",)
    FUNCTION = "load_gligen"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"gligen_name": (cls.names("gligen"),)}}

    def load_gligen(self, gligen_name: str) -> tuple[Any]:
        from plugins.core_nodes.models.gligen import load_gligen_file

        return (load_gligen_file(self.path("gligen", gligen_name)),)


class GLIGENTextBoxApply(CoreNode):
    CATEGORY = "model/conditioning/gligen"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def pixels(default: int, low: int) -> tuple[str, dict[str, Any]]:
            return ("INT", {"default": default, "min": low, "max": MAX_RESOLUTION, "step": 8})

        return {
            "required": {
                "conditioning_to": ("CONDITIONING",),
                "clip": ("CLIP",),
                "gligen_textbox_model": ("GLIGEN",),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                "width": pixels(64, 8),
                "height": pixels(64, 8),
                "x": pixels(0, 0),
                "y": pixels(0, 0),
            }
        }

    def append(
        self,
        conditioning_to: list[Any],
        clip: Any,
        gligen_textbox_model: Any,
        text: str,
        width: int,
        height: int,
        x: int,
        y: int,
    ) -> tuple[list[Any]]:
        # GLIGEN was trained on the pooled text embedding before CLIP's projection.
        _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled="unprojected")
        box = (pooled, height // 8, width // 8, y // 8, x // 8)
        out = []
        for tensor, options in conditioning_to:
            # Boxes accumulate: each application adds one to those already on the entry.
            earlier = list(options["gligen"][2]) if "gligen" in options else []
            out.append([tensor, {**options, "gligen": ("position", gligen_textbox_model, [*earlier, box])}])
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "GLIGENLoader": (GLIGENLoader, "Load GLIGEN Model"),
    "GLIGENTextBoxApply": (GLIGENTextBoxApply, "Apply GLIGEN Text Box"),
}
