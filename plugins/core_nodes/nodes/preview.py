"""PreviewAny ("Preview as Text"): shows any value as text in the UI and passes it on as a STRING."""

from __future__ import annotations

import json
from typing import Any

from plugins.core_nodes.nodes.common import CoreNode

# Tensors print this many items at each end of every dimension (the reference's choice).
_EDGE_ITEMS = 6


def as_text(source: Any) -> str:
    """The reference's text for a value: strings as they are, numbers and booleans with ``str``,
    anything JSON can write as indented JSON, the rest with ``str`` (tensors abbreviated)."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, int | float | bool):
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except Exception:
        pass
    try:
        return _str_with_edge_items(source)
    except Exception:
        return "source exists, but could not be serialized."


def _str_with_edge_items(source: Any) -> str:
    try:
        from torch._tensor_str import printoptions
    except ImportError:  # a torch without the context manager: plain str
        return str(source)
    # A context manager, so the server's other tensor printing keeps torch's defaults.
    with printoptions(edgeitems=_EDGE_ITEMS):
        return str(source)


class PreviewAny(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_preview_any"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "main"
    OUTPUT_NODE = True
    CATEGORY = "utilities"
    SEARCH_ALIASES = ["show output", "inspect", "debug", "print value", "show text"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"source": ("*", {})}}

    def main(self, source: Any = None) -> dict[str, Any]:
        value = as_text(source)
        return {"ui": {"text": (value,)}, "result": (value,)}


NODES: dict[str, tuple[type, str | None]] = {"PreviewAny": (PreviewAny, "Preview as Text")}
