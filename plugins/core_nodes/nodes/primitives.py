"""Primitive value nodes: a widget whose value becomes an output."""

from __future__ import annotations

import sys
from typing import Any

from plugins.core_nodes.nodes.common import CoreNode


class _Primitive(CoreNode):
    FUNCTION = "execute"
    CATEGORY = "utilities/primitive"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_primitive"

    def execute(self, value: Any) -> tuple[Any]:
        return (value,)


def _primitive(name: str, io_type: str, options: dict[str, Any], deprecated: bool = False) -> type:
    def input_types(cls: type) -> dict[str, Any]:
        return {"required": {"value": (io_type, dict(options))}}

    attrs = {"RETURN_TYPES": (io_type,), "INPUT_TYPES": classmethod(input_types), "DEPRECATED": deprecated}
    return type(name, (_Primitive,), attrs)


# Deprecated in the reference (Input Text replaces it): the frontend hides it from search.
PrimitiveString = _primitive("PrimitiveString", "STRING", {"multiline": False}, deprecated=True)
PrimitiveStringMultiline = _primitive("PrimitiveStringMultiline", "STRING", {"multiline": True})
# "fixed": the frontend adds the after-generate control but leaves the value alone by default.
PrimitiveInt = _primitive(
    "PrimitiveInt", "INT", {"min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": "fixed"}
)
PrimitiveFloat = _primitive("PrimitiveFloat", "FLOAT", {"min": -sys.maxsize, "max": sys.maxsize, "step": 0.1})
PrimitiveBoolean = _primitive("PrimitiveBoolean", "BOOLEAN", {})

NODES: dict[str, tuple[type, str | None]] = {
    "PrimitiveString": (PrimitiveString, "Text String (DEPRECATED)"),
    "PrimitiveStringMultiline": (PrimitiveStringMultiline, "Input Text"),
    "PrimitiveInt": (PrimitiveInt, "Int"),
    "PrimitiveFloat": (PrimitiveFloat, "Float"),
    "PrimitiveBoolean": (PrimitiveBoolean, "Boolean"),
}
