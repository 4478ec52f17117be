"""A small schema-declared ("V3") node API.

A V3 node declares itself in one place instead of a handful of class attributes::

    from kernel.nodes import v3 as io

    class Scale(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="Scale",
                display_name="Scale a number",
                category="math",
                inputs=[io.Float.Input("value"), io.Float.Input("factor", default=2.0, min=0.0)],
                outputs=[io.Float.Output(display_name="scaled")],
                hidden=[io.Hidden.unique_id],
            )

        @classmethod
        def execute(cls, value, factor):
            return io.NodeOutput(value * factor, ui={"text": [str(cls.hidden.unique_id)]})

Register it like any node: ``register("Scale", Scale)``. The kernel sees V1 and V3 classes
through the same :class:`kernel.nodes.NodeSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class Hidden(StrEnum):
    """Hidden values a node may ask for; read them from ``cls.hidden.<name>`` in ``execute``."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"
    comfy_usage_source = "COMFY_USAGE_SOURCE"


class HiddenHolder:
    """The hidden values of one call, as attributes (``None`` when not requested)."""

    def __init__(self, values: dict[str, Any]) -> None:
        for member in Hidden:
            setattr(self, member.name, values.get(member.name))


# Keyword arguments whose V1 spelling differs from the Python one.
_V1_OPTION_NAMES = {"raw_link": "rawLink", "force_input": "forceInput", "display_mode": "display"}


@dataclass
class InputSpec:
    """One declared input; ``as_v1()`` gives the ``(TYPE, options)`` tuple of INPUT_TYPES."""

    id: str
    io_type: str
    optional: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def as_v1(self) -> tuple[Any, ...]:
        return (self.io_type, dict(self.options)) if self.options else (self.io_type,)


@dataclass
class OutputSpec:
    io_type: str
    id: str | None = None
    display_name: str | None = None
    tooltip: str | None = None
    is_output_list: bool = False


class ComfyType:
    """An IO type: ``X.Input(id, ...)`` declares an input, ``X.Output(...)`` an output."""

    io_type: ClassVar[str] = "*"

    @classmethod
    def Input(  # noqa: N802 - the reference's spelling
        cls,
        id: str,  # noqa: A002
        *,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        raw_link: bool | None = None,
        force_input: bool | None = None,
        **extra: Any,
    ) -> InputSpec:
        named = {
            "display_name": display_name,
            "tooltip": tooltip,
            "lazy": lazy,
            "raw_link": raw_link,
            "force_input": force_input,
            **extra,
        }
        options = {_V1_OPTION_NAMES.get(k, k): v for k, v in named.items() if v is not None}
        return InputSpec(id=id, io_type=cls.io_type, optional=optional, options=options)

    @classmethod
    def Output(  # noqa: N802
        cls,
        id: str | None = None,  # noqa: A002
        *,
        display_name: str | None = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
    ) -> OutputSpec:
        return OutputSpec(cls.io_type, id, display_name, tooltip, is_output_list)


class Int(ComfyType):
    io_type = "INT"


class Float(ComfyType):
    io_type = "FLOAT"


class String(ComfyType):
    io_type = "STRING"


class Boolean(ComfyType):
    io_type = "BOOLEAN"


class Combo(ComfyType):
    """Choice widget: ``Combo.Input("mode", options=["a", "b"], default="a")``."""

    io_type = "COMBO"


class Image(ComfyType):
    io_type = "IMAGE"


class Mask(ComfyType):
    io_type = "MASK"


class Latent(ComfyType):
    io_type = "LATENT"


class Model(ComfyType):
    io_type = "MODEL"


class Clip(ComfyType):
    io_type = "CLIP"


class Vae(ComfyType):
    io_type = "VAE"


class Conditioning(ComfyType):
    io_type = "CONDITIONING"


class AnyType(ComfyType):
    io_type = "*"


def Custom(io_type: str) -> type[ComfyType]:  # noqa: N802
    """A type known only by name (``Custom("MY_DATA")``); links match by that name."""
    return type(f"Custom_{io_type}", (ComfyType,), {"io_type": io_type})


@dataclass
class Schema:
    """Everything the engine and ``/object_info`` need to know about a V3 node."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: Sequence[InputSpec] = ()
    outputs: Sequence[OutputSpec] = ()
    hidden: Sequence[Hidden] = ()
    description: str = ""
    search_aliases: Sequence[str] = ()
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False
    accept_all_inputs: bool = False
    has_intermediate_output: bool = False
    essentials_category: str | None = None
    price_badge: Any = None


class NodeOutput:
    """What ``execute`` returns: output values, plus optional UI, expansion or blocking."""

    def __init__(
        self,
        *values: Any,
        ui: Any = None,
        expand: dict[str, Any] | None = None,
        block_execution: str | None = None,
    ) -> None:
        self.values = values
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.values or None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeOutput:
        result = data.get("result") or ()
        return cls(*result, ui=data.get("ui"), expand=data.get("expand"))


class ComfyNode:
    """Base class of V3 nodes: override ``define_schema`` and ``execute`` (classmethods)."""

    # Per call the kernel runs ``execute`` on a subclass whose ``hidden`` holds that call's values.
    hidden: ClassVar[Any] = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"{cls.__name__} must define define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{cls.__name__} must define execute()")

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        # Default: ask for every input that has not been evaluated yet.
        return [name for name, value in kwargs.items() if value is None]


class ComfyExtension:
    """A bundle of V3 nodes, as returned by a pack's ``comfy_entrypoint()``."""

    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list[type[ComfyNode]]:
        return []


__all__ = [
    "AnyType",
    "Boolean",
    "Clip",
    "Combo",
    "ComfyExtension",
    "ComfyNode",
    "ComfyType",
    "Conditioning",
    "Custom",
    "Float",
    "Hidden",
    "HiddenHolder",
    "Image",
    "InputSpec",
    "Int",
    "Latent",
    "Mask",
    "Model",
    "NodeOutput",
    "OutputSpec",
    "Schema",
    "String",
    "Vae",
]
