"""The Flux nodes (the reference's ``comfy_extras.nodes_flux``) and the 16-channel empty latent
(``comfy_extras.nodes_sd3``'s EmptySD3LatentImage, which Flux workflows use too).

Flux dev is guidance-distilled: the guidance strength is a model input, not classifier-free
guidance. It travels in the conditioning options under ``guidance`` (CLIPTextEncodeFlux and
FluxGuidance set it, FluxDisableGuidance sets None); the model reads it when it samples
(``models/flux_family.py``), 3.5 when nothing set it. These nodes are not in the golden file;
their interface is the reference's source.
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.conditioning import set_values

Conditioning = list[list[Any]]

_FLUX_MODULE = "comfy_extras.nodes_flux"
_SD3_MODULE = "comfy_extras.nodes_sd3"
_FLUX_CATEGORY = "advanced/conditioning/flux"


def _guidance() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})


def _prompt() -> tuple[str, dict[str, Any]]:
    return ("STRING", {"multiline": True, "dynamicPrompts": True})


class CLIPTextEncodeFlux(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = _FLUX_CATEGORY
    RELATIVE_PYTHON_MODULE = _FLUX_MODULE
    DESCRIPTION = "Flux conditioning: clip_l's prompt gives the pooled vector, t5xxl's the text tokens."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP", {}),
                "clip_l": _prompt(),
                "t5xxl": _prompt(),
                "guidance": _guidance(),
            }
        }

    def encode(self, clip: Any, clip_l: str, t5xxl: str, guidance: float) -> tuple[Conditioning]:
        if clip is None:
            raise RuntimeError("CLIPTextEncodeFlux: clip input is invalid: None (load Flux's text encoders with DualCLIPLoader)")
        tokens = dict(clip.tokenize(clip_l))
        t5 = clip.tokenize(t5xxl)
        if "t5xxl" not in t5 or "l" not in tokens:
            raise ValueError(
                f"CLIPTextEncodeFlux needs a Flux CLIP (clip_l and t5xxl); this CLIP has {sorted(t5)} "
                "(load both with DualCLIPLoader, type flux)"
            )
        tokens["t5xxl"] = t5["t5xxl"]
        return (clip.encode_from_tokens_scheduled(tokens, add_dict={"guidance": float(guidance)}),)


class FluxGuidance(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = _FLUX_CATEGORY
    RELATIVE_PYTHON_MODULE = _FLUX_MODULE
    DESCRIPTION = "Sets the distilled guidance strength Flux dev samples with."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING", {}), "guidance": _guidance()}}

    def append(self, conditioning: Conditioning, guidance: float) -> tuple[Conditioning]:
        return (set_values(conditioning, {"guidance": float(guidance)}),)


class FluxDisableGuidance(CoreNode):
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = _FLUX_CATEGORY
    RELATIVE_PYTHON_MODULE = _FLUX_MODULE
    DESCRIPTION = "Leaves the guidance embedding out entirely (for Flux-like models trained without it)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING", {})}}

    def append(self, conditioning: Conditioning) -> tuple[Conditioning]:
        return (set_values(conditioning, {"guidance": None}),)


class EmptySD3LatentImage(CoreNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent/sd3"
    RELATIVE_PYTHON_MODULE = _SD3_MODULE
    DESCRIPTION = "An all-zero 16-channel latent at one eighth of the size (SD3 and Flux)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}
        return {
            "required": {
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


NODES: dict[str, tuple[type, str | None]] = {
    "CLIPTextEncodeFlux": (CLIPTextEncodeFlux, None),
    "FluxGuidance": (FluxGuidance, None),
    "FluxDisableGuidance": (FluxDisableGuidance, None),
    "EmptySD3LatentImage": (EmptySD3LatentImage, None),
}
