"""``comfy_api.latest.io``: the V3 schema API over the kernel's own classes (so the engine knows them).

``NodeOutput`` is the kernel's with the reference's ``args`` and indexing (``out[0]``, unpacking).
The types add the reference's call forms on top of the kernel's: ``Input(id, display_name,
optional, tooltip, lazy)`` and ``Output(id, display_name, tooltip, is_output_list)`` take their
arguments positionally too, and ``Combo.Input(id, options, ...)`` accepts an Enum class for the
options (its values) and an Enum member as the default.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

from kernel.nodes import v3 as _v3
from kernel.nodes.v3 import (
    ComfyExtension,
    ComfyNode,
    ComfyType,
    Hidden,
    InputSpec,
    OutputSpec,
    Schema,
)
from plugins.comfy_compat.reference_calls import NodeOutput


class _ReferenceArgs:
    """The reference's positional ``Input`` / ``Output`` parameters over the kernel's keyword ones."""

    @classmethod
    def Input(  # noqa: N802 - the reference's spelling
        cls,
        id: str,  # noqa: A002
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        **extra: Any,
    ) -> InputSpec:
        base: Any = super()
        return base.Input(
            id, display_name=display_name, optional=optional, tooltip=tooltip, lazy=lazy, **extra
        )

    @classmethod
    def Output(  # noqa: N802
        cls,
        id: str | None = None,  # noqa: A002
        display_name: str | None = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
    ) -> OutputSpec:
        base: Any = super()
        return base.Output(id, display_name=display_name, tooltip=tooltip, is_output_list=is_output_list)


class Int(_ReferenceArgs, _v3.Int):
    pass


class Float(_ReferenceArgs, _v3.Float):
    pass


class String(_ReferenceArgs, _v3.String):
    pass


class Boolean(_ReferenceArgs, _v3.Boolean):
    pass


class Image(_ReferenceArgs, _v3.Image):
    pass


class Mask(_ReferenceArgs, _v3.Mask):
    pass


class Latent(_ReferenceArgs, _v3.Latent):
    pass


class Model(_ReferenceArgs, _v3.Model):
    pass


class Clip(_ReferenceArgs, _v3.Clip):
    pass


class Vae(_ReferenceArgs, _v3.Vae):
    pass


class Conditioning(_ReferenceArgs, _v3.Conditioning):
    pass


class AnyType(_ReferenceArgs, _v3.AnyType):
    pass


class Combo(_ReferenceArgs, _v3.Combo):
    """Choice widget: ``Combo.Input("mode", ["a", "b"], default="a")`` or with an Enum class."""

    @classmethod
    def Input(  # noqa: N802
        cls,
        id: str,  # noqa: A002
        options: Any = None,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        default: Any = None,
        **extra: Any,
    ) -> InputSpec:
        if isinstance(options, type) and issubclass(options, Enum):
            options = [member.value for member in options]
        if isinstance(default, Enum):
            default = default.value
        if options is not None:
            extra["options"] = list(options)
        if default is not None:
            extra["default"] = default
        return super().Input(id, display_name, optional, tooltip, lazy, **extra)

    @classmethod
    def Output(  # noqa: N802
        cls,
        id: str | None = None,  # noqa: A002
        display_name: str | None = None,
        options: Any = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
    ) -> OutputSpec:
        """A combo output; with ``options`` its type is that list of choices, as a V1 node's
        ``RETURN_TYPES = (KSampler.SAMPLERS,)``, so it links into combo inputs."""
        spec = super().Output(id, display_name, tooltip, is_output_list)
        if options is not None:
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            spec.io_type = list(options)
        return spec


def Custom(io_type: str) -> type[ComfyType]:  # noqa: N802 - the reference's spelling
    """A type known only by name (``Custom("MY_DATA")``); links match by that name."""
    return type(f"Custom_{io_type}", (_ReferenceArgs, ComfyType), {"io_type": io_type})


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
