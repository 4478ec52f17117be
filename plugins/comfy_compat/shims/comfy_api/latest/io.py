"""``comfy_api.latest.io``: the V3 schema API; the classes are the kernel's, so the engine knows them."""

from __future__ import annotations

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
Audio = Custom("AUDIO")
Video = Custom("VIDEO")

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
    "Image",
    "InputSpec",
    "Int",
    "Latent",
    "Mask",
    "Model",
    "NodeOutput",
    "Noise",
    "OutputSpec",
    "Sampler",
    "Schema",
    "Sigmas",
    "String",
    "UpscaleModel",
    "Vae",
    "Video",
]
