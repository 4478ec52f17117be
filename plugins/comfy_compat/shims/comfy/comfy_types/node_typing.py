"""``comfy.comfy_types.node_typing``: the typing helpers node packs annotate V1 nodes with."""

from __future__ import annotations

from abc import ABC
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypedDict


class IO(StrEnum):
    """Socket type names; ``IO.ANY`` (``"*"``) matches every type."""

    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    VIDEO = "VIDEO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, value: object) -> bool:
        """Types "differ" only when neither comma list contains the other; ``*`` matches all.

        The server's link check compares with ``!=``, so ``IO.NUMBER`` accepts an ``INT`` link.
        """
        if self == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        mine, theirs = frozenset(self.split(",")), frozenset(value.split(","))
        return not (theirs <= mine or mine <= theirs)


class InputTypeOptions(TypedDict, total=False):
    default: Any
    min: float
    max: float
    step: float
    tooltip: str
    lazy: bool
    rawLink: bool
    forceInput: bool
    multiline: bool
    multiselect: bool
    display: Literal["number", "slider", "color"]


class RemoteInputOptions(TypedDict, total=False):
    route: str
    refresh_button: bool
    control_after_refresh: Literal["first", "last"]
    timeout: int
    max_retries: int
    refresh: int


class MultiSelectOptions(TypedDict, total=False):
    placeholder: str
    chip: bool


class HiddenInputTypeDict(TypedDict, total=False):
    node_id: Literal["UNIQUE_ID"]
    unique_id: Literal["UNIQUE_ID"]
    prompt: Literal["PROMPT"]
    extra_pnginfo: Literal["EXTRA_PNGINFO"]
    dynprompt: Literal["DYNPROMPT"]


class FileLocator(TypedDict, total=False):
    """Where a file the UI shows lives: name, subfolder and root (``input``/``output``/``temp``)."""

    filename: str
    subfolder: str
    type: Literal["input", "output", "temp"]


class InputTypeDict(TypedDict, total=False):
    required: dict[str, tuple[Any, ...]]
    optional: dict[str, tuple[Any, ...]]
    hidden: dict[str, Any]


class ComfyNodeABC(ABC):  # noqa: B024 - an annotation base without abstract members, like the reference's
    """Base class documenting the V1 node attributes; subclasses still set them as usual."""

    DESCRIPTION: ClassVar[str]
    CATEGORY: ClassVar[str]
    RETURN_TYPES: ClassVar[tuple[str, ...]]
    FUNCTION: ClassVar[str]


class CheckLazyMixin:
    """Default ``check_lazy_status``: every lazy input that is still None is needed."""

    def check_lazy_status(self, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]


__all__ = [
    "IO",
    "CheckLazyMixin",
    "ComfyNodeABC",
    "FileLocator",
    "HiddenInputTypeDict",
    "InputTypeDict",
    "InputTypeOptions",
    "MultiSelectOptions",
    "RemoteInputOptions",
]
