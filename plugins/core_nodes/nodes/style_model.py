"""Style models: the loader and StyleModelApply (group A).

StyleModelApply appends the style model's tokens for a CLIP vision output to every entry's text
tokens. ``strength_type`` "multiply" scales those tokens; "attn_bias" leaves them and instead
adds ``log(strength)`` to the attention paid to them, through the entry's ``attention_mask``
(models that read it: Flux; SD1/SDXL sample as without it, as in the reference).
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.loaders import _Loader


class StyleModelLoader(_Loader):
    RETURN_TYPES = ("STYLE_MODEL",)
    FUNCTION = "load_style_model"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"style_model_name": (cls.names("style_models"),)}}

    def load_style_model(self, style_model_name: str) -> tuple[Any]:
        from plugins.core_nodes.models.style_model import load_style_model

        return (load_style_model(self.path("style_models", style_model_name)),)


def extend_attention_mask(options: dict[str, Any], n_txt: int, batch: int, added: int, bias: float) -> Any:
    """The entry's attention bias grown by ``added`` tokens right after its ``n_txt`` text tokens:
    the earlier text (and image-reference) tokens keep their biases and attend to the new ones
    with ``bias``. A boolean mask is read as allowed (0) / blocked (-inf); half precision, as
    the reference keeps it."""
    import torch

    ref_h, ref_w = options.get("attention_mask_img_shape", (1, 1))
    n_ref = ref_h * ref_w
    old = options.get("attention_mask")
    if old is None:
        old = torch.zeros((batch, n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if old.dtype == torch.bool:
        old = torch.log(old.to(torch.float16))
    size = n_txt + added + n_ref
    new = torch.zeros((batch, size, size), dtype=torch.float16)
    end = n_txt + added
    # The old mask's four quadrants (text / reference) around the inserted rows and columns.
    new[:, :n_txt, :n_txt] = old[:, :n_txt, :n_txt]
    new[:, :n_txt, end:] = old[:, :n_txt, n_txt:]
    new[:, end:, :n_txt] = old[:, n_txt:, :n_txt]
    new[:, end:, end:] = old[:, n_txt:, n_txt:]
    new[:, :n_txt, n_txt:end] = bias
    new[:, end:, n_txt:end] = bias
    return new


class StyleModelApply(CoreNode):
    CATEGORY = "model/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_stylemodel"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "style_model": ("STYLE_MODEL",),
                "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                "strength_type": (["multiply", "attn_bias"],),
            }
        }

    def apply_stylemodel(
        self,
        conditioning: list[Any],
        style_model: Any,
        clip_vision_output: Any,
        strength: float,
        strength_type: str,
    ) -> tuple[list[Any]]:
        import math

        import torch

        # Every image's tokens in one row: a batch of images adds all their tokens.
        tokens = style_model.get_cond(clip_vision_output).flatten(0, 1).unsqueeze(0)
        if strength_type == "multiply":
            tokens = tokens * strength
        # log(0) is -inf: strength 0 hides the tokens entirely.
        bias = (math.log(strength) if strength > 0 else -math.inf) if strength_type == "attn_bias" else 0.0
        out = []
        for text, options in conditioning:
            new_options = dict(options)
            # An existing mask must grow with the tokens even at bias 0.
            if "attention_mask" in options or (strength_type == "attn_bias" and strength != 1.0):
                mask = extend_attention_mask(options, text.shape[1], text.shape[0], tokens.shape[1], bias)
                new_options["attention_mask"] = mask.to(text.device)
                new_options["attention_mask_img_shape"] = options.get("attention_mask_img_shape", (1, 1))
            out.append([torch.cat((text, tokens.to(text)), dim=1), new_options])
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "StyleModelLoader": (StyleModelLoader, "Load Style Model"),
    "StyleModelApply": (StyleModelApply, "Apply Style Model"),
}
