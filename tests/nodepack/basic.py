"""Test node pack: V1 and V3 nodes covering the node contract (validation, metadata, results).

Use it as an inline plugin: ``comfy_server(plugins=[("testpack", tests.nodepack.basic)])``.
Execution-oriented nodes live in ``tests/nodepack/exec_nodes.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel import hookimpl
from kernel.nodes import ExecutionBlocker, GraphBuilder
from kernel.nodes import v3 as io
from tests.nodepack.common import IntEcho

BIG_CHOICES = [f"choice_{i:02d}" for i in range(25)]


class TestInt:
    """An INT source with a bounded widget."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 100, "step": 1})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class TestPrimitives:
    """One widget per primitive type: literal coercion writes back INT/FLOAT/STRING/BOOLEAN."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
    RETURN_NAMES = ("i", "f", "s", "b")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "i": ("INT", {"default": 0}),
                "f": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0, "step": 0.1}),
                "s": ("STRING", {"default": "", "multiline": True}),
                "b": ("BOOLEAN", {"default": False}),
            },
            "optional": {"items": ("LIST",)},
        }

    def run(self, i: int, f: float, s: str, b: bool, items: Any = None) -> tuple[int, float, str, bool]:
        return (i, f, s, b)


class TestString:
    CATEGORY = "testing"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"default": "hello"})}}

    def run(self, text: str) -> tuple[str]:
        return (text,)


class TestCombo:
    """Combos in both forms: a list of choices, COMBO with options, multiselect, and a long list."""

    CATEGORY = "testing"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"choice": (["a", "b", "c"], {"default": "a"})},
            "optional": {
                "new_style": ("COMBO", {"options": ["x", "y"]}),
                "many": ("COMBO", {"options": ["p", "q", "r"], "multiselect": True}),
                "big": (BIG_CHOICES,),
            },
        }

    def run(self, choice: str, **_: Any) -> tuple[str]:
        return (choice,)


class TestSink:
    """Output node with an INT input; reports its value as UI."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0})}, "optional": {"extra": ("INT",)}}

    def run(self, value: int, extra: int | None = None) -> dict[str, Any]:
        return {"ui": {"value": [value]}}


class TestAnySink:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("*",)}}

    def run(self, value: Any) -> dict[str, Any]:
        return {"ui": {"value": [str(value)]}}


class TestUnionSink:
    """Accepts a comma union of types."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("FLOAT, INT",)}}

    def run(self, value: Any) -> dict[str, Any]:
        return {"ui": {"value": [value]}}


class TestTruthyOutput:
    """OUTPUT_NODE = 1 is not ``True``: never treated as an output."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def run(self) -> dict[str, Any]:
        return {"ui": {}}


class TestValidated:
    """VALIDATE_INPUTS naming ``value``: min/max are its job, and odd numbers fail."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"min": 0, "max": 10}), "other": ("INT", {"default": 0})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value: int) -> bool | str:
        if value is None:  # linked: not known at validation time
            return True
        return True if value % 2 == 0 else f"{value} is odd"

    def run(self, value: int, other: int) -> tuple[int]:
        return (value,)


class TestValidateTypes:
    """VALIDATE_INPUTS with ``input_types``: link type checking is off for the whole node."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types: dict[str, Any]) -> bool | str:
        return True if input_types.get("value") in ("INT", "STRING") else f"cannot take {input_types}"

    def run(self, value: Any) -> tuple[Any]:
        return (value,)


class TestAsyncValidated:
    """An async validator taking **kwargs: 13 is refused."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"max": 5})}}

    @classmethod
    async def VALIDATE_INPUTS(cls, **kwargs: Any) -> bool:
        await asyncio.sleep(0)
        return kwargs.get("value") != 13

    def run(self, value: int) -> tuple[int]:
        return (value,)


class TestRaisingValidate:
    """A validator that raises."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, value: int) -> bool:
        raise RuntimeError("validator exploded")

    def run(self, value: int) -> dict[str, Any]:
        return {"ui": {"value": [value]}, "result": (value,)}


class TestBroken:
    """INPUT_TYPES raises: omitted from /object_info, an inner validation exception upstream."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        raise ValueError("broken node")

    def run(self) -> tuple[int]:
        return (0,)


class TestPassthrough(IntEcho):
    """INT in, INT out: for chains and cycles."""

    CATEGORY = "testing"


class TestMeta:
    """Every metadata attribute of the V1 contract."""

    CATEGORY = "testing/meta"
    DESCRIPTION = "A node with every piece of metadata"
    RETURN_TYPES = ("INT", "STRING")
    RETURN_NAMES = ("number", "label")
    OUTPUT_TOOLTIPS = ("the number", "the label")
    OUTPUT_IS_LIST = (True, False)
    INPUT_IS_LIST = True
    FUNCTION = "run"
    NOT_IDEMPOTENT = True
    DEPRECATED = True
    EXPERIMENTAL = True
    DEV_ONLY = True
    API_NODE = False
    SEARCH_ALIASES = ["metadata", "everything"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "value": ("INT", {"default": 1, "tooltip": "a value"}),
                "maybe": ("INT", {"lazy": True}),
                "raw": ("INT", {"rawLink": True}),
            },
            "optional": {"label": ("STRING", {"forceInput": True})},
            "hidden": {
                "unique_id": "UNIQUE_ID",
                "prompt": "PROMPT",
                "extra_pnginfo": "EXTRA_PNGINFO",
                "dynprompt": "DYNPROMPT",
            },
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return math.nan

    def check_lazy_status(self, value: list[int], maybe: list[int] | None = None, **kwargs: Any) -> list[str]:
        return ["maybe"] if maybe is None else []

    def run(
        self, value: list[int], maybe: Any = None, raw: Any = None, label: Any = None, **hidden: Any
    ) -> tuple[Any, ...]:
        return (list(value), "meta")


class TestExpand:
    """Expands into a chain of TestPassthrough nodes built with GraphBuilder."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "value": ("INT", {"default": 0}),
                "count": ("INT", {"default": 2, "min": 1, "max": 10}),
            }
        }

    def run(self, value: int, count: int) -> dict[str, Any]:
        graph = GraphBuilder()
        last: Any = value
        for _ in range(count):
            last = graph.node("TestPassthrough", value=last).out(0)
        return {"result": (last,), "expand": graph.finalize()}


class TestBlocker:
    CATEGORY = "testing"
    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"message": ("STRING", {"default": ""})}}

    def run(self, message: str) -> ExecutionBlocker:
        return ExecutionBlocker(message or None)


class TestGate:
    """Output node that waits (up to 20 s) until the file named by ``path`` exists.

    Queue tests submit it first so the queue keeps the prompts after it pending.
    """

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"path": ("STRING", {"default": ""})}}

    def run(self, path: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while path and not Path(path).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"ui": {"released": [True]}}


# --- V3 ------------------------------------------------------------------------------------------


class TestV3Scale(io.ComfyNode):
    """A V3 node: typed inputs with options, a combo, hidden unique_id, a custom validator."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestV3Scale",
            display_name="Scale (V3)",
            category="testing/v3",
            description="Multiplies a number",
            inputs=[
                io.Float.Input("value", default=1.0, tooltip="the number"),
                io.Float.Input("factor", default=2.0, min=0.0, max=10.0),
                io.Combo.Input("mode", options=["mul", "add"], default="mul"),
                io.Int.Input("offset", optional=True, lazy=True),
            ],
            outputs=[io.Float.Output(display_name="scaled", tooltip="value × factor")],
            hidden=[io.Hidden.unique_id],
            search_aliases=["multiply"],
        )

    @classmethod
    def validate_inputs(cls, value: float) -> bool | str:
        if value is not None and value < 0:
            return "value must not be negative"
        return True

    @classmethod
    def execute(cls, value: float, factor: float, mode: str, offset: int | None = None) -> io.NodeOutput:
        result = value * factor if mode == "mul" else value + factor
        return io.NodeOutput(result, ui={"unique_id": [cls.hidden.unique_id]})


class TestV3Sink(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestV3Sink",
            category="testing/v3",
            inputs=[io.Custom("FLOAT").Input("value")],
            is_output_node=True,
        )

    @classmethod
    async def execute(cls, value: float) -> io.NodeOutput:
        return io.NodeOutput(ui={"value": [value]})


class TestV3List(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestV3List",
            category="testing/v3",
            inputs=[io.Int.Input("count", default=3, min=0, max=100)],
            outputs=[io.Int.Output(is_output_list=True), io.String.Output(display_name="label")],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, count: int) -> io.NodeOutput:
        return io.NodeOutput(list(range(count)), "list")


V1_NODES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TestInt,
        TestPrimitives,
        TestString,
        TestCombo,
        TestSink,
        TestAnySink,
        TestUnionSink,
        TestTruthyOutput,
        TestValidated,
        TestValidateTypes,
        TestAsyncValidated,
        TestRaisingValidate,
        TestBroken,
        TestPassthrough,
        TestMeta,
        TestExpand,
        TestBlocker,
        TestGate,
    )
}
V3_NODES: dict[str, type] = {cls.__name__: cls for cls in (TestV3Scale, TestV3Sink, TestV3List)}
DISPLAY_NAMES = {"TestInt": "Test Int", "TestMeta": "Test Meta"}


@hookimpl
def register_nodes(register: Callable[..., None]) -> None:
    for name, cls in V1_NODES.items():
        register(name, cls, display_name=DISPLAY_NAMES.get(name))
    for name, cls in V3_NODES.items():
        register(name, cls)
