"""``comfy_api.latest.io``: the V3 schema API; the classes are the kernel's, so the engine knows them."""

from __future__ import annotations

from enum import StrEnum

from kernel.nodes.v3 import (
    AnyType,
    Boolean,
    Clip,
    Combo,
    ComfyExtension,
    ComfyNode,
    ComfyType,
    Conditioning,
    Custom,
    Float,
    Hidden,
    Image,
    InputSpec,
    Int,
    Latent,
    Mask,
    Model,
    NodeOutput,
    OutputSpec,
    Schema,
    String,
    Vae,
)

# The reference spells the base class ComfyNode and, in older builds, ComfyNodeV3.
ComfyNodeV3 = ComfyNode
ComfyTypeIO = ComfyType
Sigmas = Custom("SIGMAS")
Noise = Custom("NOISE")
Sampler = Custom("SAMPLER")
Guider = Custom("GUIDER")
ClipVision = Custom("CLIP_VISION")
ClipVisionOutput = Custom("CLIP_VISION_OUTPUT")
ControlNet = Custom("CONTROL_NET")
UpscaleModel = Custom("UPSCALE_MODEL")
StyleModel = Custom("STYLE_MODEL")
LatentUpscaleModel = Custom("LATENT_UPSCALE_MODEL")
Gligen = Custom("GLIGEN")
Audio = Custom("AUDIO")
Video = Custom("VIDEO")


class NumberDisplay(StrEnum):
    """How the frontend draws an Int/Float widget (``display=``)."""

    number = "number"
    slider = "slider"


__all__ = [
    "AnyType",
    "Audio",
    "Boolean",
    "Clip",
    "ClipVision",
    "ClipVisionOutput",
    "Combo",
    "ComfyExtension",
    "ComfyNode",
    "ComfyNodeV3",
    "ComfyType",
    "ComfyTypeIO",
    "Conditioning",
    "ControlNet",
    "Custom",
    "Float",
    "Guider",
    "Hidden",
    "Gligen",
    "Image",
    "InputSpec",
    "Int",
    "Latent",
    "LatentUpscaleModel",
    "Mask",
    "Model",
    "NodeOutput",
    "Noise",
    "NumberDisplay",
    "OutputSpec",
    "Sampler",
    "Schema",
    "Sigmas",
    "String",
    "StyleModel",
    "UpscaleModel",
    "Vae",
    "Video",
]
