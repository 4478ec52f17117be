"""Node expansion through GraphBuilder; proves its prestartup script ran before the import."""

import os

from comfy_execution.graph_utils import GraphBuilder, is_link

PRESTARTUP = os.environ.get("EXPAND_PACK_PRESTARTUP", "missing")


class ExpandInc:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        return (value + 1,)


class ExpandChain:
    """Replaces itself by `times` ExpandInc nodes in a row."""

    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "times": ("INT", {"default": 3, "min": 1, "max": 20})}}

    def run(self, value, times):
        graph = GraphBuilder()
        current = value
        for _ in range(times):
            current = graph.node("ExpandInc", value=current).out(0)
        assert is_link(current)
        return {"result": (current,), "expand": graph.finalize()}


class ExpandPrestartup:
    CATEGORY = "compat"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (PRESTARTUP,)


NODE_CLASS_MAPPINGS = {
    "ExpandInc": ExpandInc,
    "ExpandChain": ExpandChain,
    "ExpandPrestartup": ExpandPrestartup,
}
