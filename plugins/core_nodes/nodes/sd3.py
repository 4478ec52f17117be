"""The SD3 / SD3.5 nodes (the reference's ``comfy_extras.nodes_sd3``); EmptySD3LatentImage lives
with the Flux nodes (:mod:`plugins.core_nodes.nodes.flux`), which use it too.

SD3's CLIP is a set of CLIP-L, OpenCLIP bigG and T5-XXL (any may be missing): TripleCLIPLoader
loads three files, DualCLIPLoader / CLIPLoader with type ``sd3`` fewer, each file told by its
contents. CLIPTextEncodeSD3 gives each encoder its own prompt. These nodes are not in the golden
file; their interface is the reference's source.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.controlnet import ControlNetApplyAdvanced, _percent, _strength
from plugins.core_nodes.nodes.guidance_patches import SkipLayerGuidanceDiT
from plugins.core_nodes.nodes.loaders import _adapter, _Loader

Conditioning = list[list[Any]]

_SD3_MODULE = "comfy_extras.nodes_sd3"
EMPTY_PADDING = ["none", "empty_prompt"]


def _prompt() -> tuple[str, dict[str, Any]]:
    return ("STRING", {"multiline": True, "dynamicPrompts": True})


class TripleCLIPLoader(_Loader):
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    RELATIVE_PYTHON_MODULE = _SD3_MODULE
    DESCRIPTION = "[Recipes]\n\nsd3: clip-l, clip-g, t5"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        names = cls.names("text_encoders")
        return {"required": {f"clip_name{i}": (list(names),) for i in (1, 2, 3)}}

    def load_clip(self, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple[Any]:
        paths = [self.path("text_encoders", name) for name in (clip_name1, clip_name2, clip_name3)]
        return (_adapter("load_clip")(paths, "sd3"),)


class CLIPTextEncodeSD3(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"
    RELATIVE_PYTHON_MODULE = _SD3_MODULE
    DESCRIPTION = (
        "SD3 conditioning with a prompt per text encoder. empty_padding 'none' leaves an empty "
        "prompt's encoder out; 'empty_prompt' encodes the empty prompt for it."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP", {}),
                "clip_l": _prompt(),
                "clip_g": _prompt(),
                "t5xxl": _prompt(),
                "empty_padding": (list(EMPTY_PADDING),),
            }
        }

    def encode(self, clip: Any, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str) -> tuple[Conditioning]:
        if clip is None:
            raise RuntimeError("CLIPTextEncodeSD3: clip input is invalid: None (load SD3's text encoders)")
        no_padding = empty_padding == "none"
        tokens = dict(clip.tokenize(clip_g))
        missing = [name for name in ("l", "g", "t5xxl") if name not in tokens]
        if missing:
            raise ValueError(
                f"CLIPTextEncodeSD3 needs an SD3 CLIP (tokenizers l, g and t5xxl); this CLIP has {sorted(tokens)} "
                "(load it with TripleCLIPLoader or an SD3 checkpoint)"
            )
        if not clip_g and no_padding:
            tokens["g"] = []
        tokens["l"] = [] if not clip_l and no_padding else clip.tokenize(clip_l)["l"]
        tokens["t5xxl"] = [] if not t5xxl and no_padding else clip.tokenize(t5xxl)["t5xxl"]
        # CLIP-L and bigG are joined chunk by chunk: the shorter prompt gets empty chunks.
        if len(tokens["l"]) != len(tokens["g"]):
            empty = clip.tokenize("")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] = [*tokens["l"], *empty["l"]]
            while len(tokens["l"]) > len(tokens["g"]):
                tokens["g"] = [*tokens["g"], *empty["g"]]
        return (clip.encode_from_tokens_scheduled(tokens),)


class SkipLayerGuidanceSD3(SkipLayerGuidanceDiT):
    """Skip-layer guidance over the MMDiT's joint blocks (SkipLayerGuidanceDiT's double layers,
    no rescaling): within the percent range the guided prediction gains ``scale * (cond -
    cond with the layers skipped)``."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = _SD3_MODULE
    FUNCTION = "skip_guidance_sd3"
    DESCRIPTION = "Generic version of SkipLayerGuidance node that can be used on every DiT model."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {}),
                "layers": ("STRING", {"default": "7, 8, 9", "multiline": False, "advanced": True}),
                "scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}),
                "start_percent": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True}),
                "end_percent": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True}),
            }
        }

    def skip_guidance_sd3(
        self, model: Any, layers: str, scale: float, start_percent: float, end_percent: float
    ) -> tuple[Any]:
        return self.skip_guidance(
            model=model, scale=scale, start_percent=start_percent, end_percent=end_percent, double_layers=layers
        )


class ControlNetApplySD3(ControlNetApplyAdvanced):
    """ControlNetApplyAdvanced with the VAE required: SD3 ControlNets take their hint as a latent,
    so the image goes through the VAE (kept by the reference, deprecated there)."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = _SD3_MODULE
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "control_net": ("CONTROL_NET",),
                "vae": ("VAE",),
                "image": ("IMAGE",),
                "strength": _strength(),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
            }
        }


NODES: dict[str, tuple[type, str | None]] = {
    "TripleCLIPLoader": (TripleCLIPLoader, None),
    "CLIPTextEncodeSD3": (CLIPTextEncodeSD3, None),
    "SkipLayerGuidanceSD3": (SkipLayerGuidanceSD3, None),
    "ControlNetApplySD3": (ControlNetApplySD3, "Apply Controlnet with VAE"),
}
