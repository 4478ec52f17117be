"""Execution-oriented test nodes (lazy, lists, blockers, async, expansion, progress, V3).

Registered by tests as an inline plugin: ``comfy_server(plugins=[("execpack", exec_nodes)])``.
Nodes report what they saw through their UI output, so tests observe them over HTTP/WS only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kernel import hookimpl
from kernel.nodes import ExecutionBlocker, GraphBuilder
from kernel.nodes import v3 as io
from kernel.progress import ProgressBar, throw_if_interrupted
from tests.nodepack.common import IntEcho

ANY = "*"


class Const:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": -(10**9), "max": 10**9})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class Add:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT", {"default": 0}), "b": ("INT", {"default": 0})}}

    def run(self, a: int, b: int) -> tuple[int]:
        return (a + b,)


class Show:
    """Output node: shows what it received (one call per list index)."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (ANY,)}}

    def run(self, value: Any) -> dict[str, Any]:
        return {"ui": {"values": [value]}}


class ShowList:
    """Output node with INPUT_IS_LIST: shows the whole list in one call."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (ANY,)}}

    def run(self, value: list[Any]) -> dict[str, Any]:
        return {"ui": {"lists": [[v if isinstance(v, int | float | str) else repr(v) for v in value]]}}


class MakeList:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"start": ("INT", {"default": 0}), "count": ("INT", {"default": 3})}}

    def run(self, start: int, count: int) -> tuple[list[int]]:
        return (list(range(start, start + count)),)


class BlockIf:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"value": ("INT",), "blocked": ("INT", {"default": 0})},
            "optional": {"message": ("STRING", {"default": ""})},
        }

    def run(self, value: int, blocked: int, message: str = "") -> tuple[Any]:
        if value == blocked:
            return (ExecutionBlocker(message or None),)
        return (value,)


class LazySwitch:
    CATEGORY = "test/exec"
    RETURN_TYPES = (ANY,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "choose_a": ("BOOLEAN", {"default": True}),
                "a": (ANY, {"lazy": True}),
                "b": (ANY, {"lazy": True}),
            }
        }

    def check_lazy_status(self, choose_a: bool, a: Any = None, b: Any = None) -> list[str]:
        if choose_a:
            return ["a"] if a is None else []
        return ["b"] if b is None else []

    def run(self, choose_a: bool, a: Any = None, b: Any = None) -> tuple[Any]:
        return (a if choose_a else b,)


class Fail:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def run(self, value: int) -> tuple[int]:
        raise RuntimeError(f"boom {value}")


class AsyncSleep:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seconds": ("FLOAT", {"default": 1.0}), "value": ("INT", {"default": 0})}}

    async def run(self, seconds: float, value: int) -> tuple[int]:
        await asyncio.sleep(seconds)
        return (value,)


class AsyncFail:
    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0})}}

    async def run(self, value: int) -> tuple[int]:
        await asyncio.sleep(0.05)
        raise ValueError(f"async boom {value}")


class Steps:
    """Sync node that reports progress (and optionally previews) and honours interrupts."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": ("INT", {"default": 3}),
                "delay": ("FLOAT", {"default": 0.0}),
                "value": ("INT", {"default": 0}),
            },
            "optional": {"preview": ("BOOLEAN", {"default": False})},
        }

    def run(self, steps: int, delay: float, value: int, preview: bool = False) -> tuple[int]:
        bar = ProgressBar(steps)
        for i in range(steps):
            time.sleep(delay)
            throw_if_interrupted()
            image = None
            if preview:
                from PIL import Image

                image = ("PNG" if i % 2 else "JPEG", Image.new("RGB", (8, 8), (255, 0, 0)), 512)
            bar.update_absolute(i + 1, steps, preview=image)
        return (value,)


class ForLoop:
    """Expands into ``count`` chained Add nodes (value + 1 each), the way loop nodes do."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",), "count": ("INT", {"default": 2})}}

    def run(self, value: int, count: int) -> dict[str, Any]:
        graph = GraphBuilder()
        current: Any = value
        for _ in range(count):
            current = graph.node("ExecAdd", a=current, b=1).out(0)
        return {"result": (current,), "expand": graph.finalize()}


class BadExpand:
    """Expansions that must fail at run time: a cycle, an unknown class, a reused node id."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mode": (["cycle", "unknown", "duplicate"],), "value": ("INT", {"default": 1})}}

    def run(self, mode: str, value: int) -> dict[str, Any]:
        if mode == "cycle":
            graph = {
                "c1": {"class_type": "ExecAdd", "inputs": {"a": ["c2", 0], "b": 1}},
                "c2": {"class_type": "ExecAdd", "inputs": {"a": ["c1", 0], "b": 1}},
            }
            return {"result": (["c1", 0],), "expand": graph}
        if mode == "unknown":
            return {"result": (["u1", 0],), "expand": {"u1": {"class_type": "NoSuchNode", "inputs": {}}}}
        return {
            "result": (["dup", 0],),
            "expand": {"dup": {"class_type": "ExecConst", "inputs": {"value": value}}},
        }


class Intermediate:
    """An intermediate-output node: its cached UI is replayed even when it does not run."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    HAS_INTERMEDIATE_OUTPUT = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def run(self, value: int) -> dict[str, Any]:
        return {"ui": {"seen": [value]}, "result": (value,)}


class BrokenIsChanged(IntEcho):
    CATEGORY = "test/exec"

    @classmethod
    def IS_CHANGED(cls, value: int) -> Any:
        raise RuntimeError("cannot tell")


class AlwaysChanged(IntEcho):
    CATEGORY = "test/exec"

    @classmethod
    def IS_CHANGED(cls, value: int) -> float:
        return float("nan")


class Hidden:
    CATEGORY = "test/exec"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"value": (ANY,)},
            "hidden": {
                "uid": "UNIQUE_ID",
                "prompt": "PROMPT",
                "pnginfo": "EXTRA_PNGINFO",
                "dyn": "DYNPROMPT",
            },
        }

    def run(self, value: Any, uid: str, prompt: dict[str, Any], pnginfo: Any, dyn: Any) -> dict[str, Any]:
        return {
            "ui": {
                "uid": [uid],
                "prompt_nodes": sorted(prompt),
                "pnginfo": [pnginfo],
                "dyn_has_self": [dyn.has_node(uid)],
            }
        }


class RawLink:
    CATEGORY = "test/exec"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (ANY, {"rawLink": True})}}

    def run(self, value: Any) -> dict[str, Any]:
        return {"ui": {"link": [value]}}


class Counter:
    """Keeps state on its instance: shows how often this instance ran."""

    CATEGORY = "test/exec"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    NOT_IDEMPOTENT = True

    def __init__(self) -> None:
        self.calls = 0

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (ANY,)}}

    def run(self, value: Any) -> dict[str, Any]:
        self.calls += 1
        return {"ui": {"calls": [self.calls]}}


class V3Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExecV3Scale",
            display_name="Scale (V3)",
            category="test/exec",
            inputs=[io.Int.Input("value"), io.Int.Input("factor", default=2)],
            outputs=[io.Int.Output(display_name="scaled")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, value: int, factor: int) -> io.NodeOutput:
        return io.NodeOutput(value * factor, ui={"scaled": [value * factor], "uid": [cls.hidden.unique_id]})


class V3AsyncShow(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExecV3AsyncShow",
            category="test/exec",
            inputs=[io.AnyType.Input("value")],
            is_output_node=True,
        )

    @classmethod
    async def execute(cls, value: Any) -> io.NodeOutput:
        await asyncio.sleep(0.01)
        return io.NodeOutput(ui={"values": [value]})


NODES: dict[str, type] = {
    "ExecConst": Const,
    "ExecAdd": Add,
    "ExecShow": Show,
    "ExecShowList": ShowList,
    "ExecMakeList": MakeList,
    "ExecBlockIf": BlockIf,
    "ExecLazySwitch": LazySwitch,
    "ExecFail": Fail,
    "ExecAsyncSleep": AsyncSleep,
    "ExecAsyncFail": AsyncFail,
    "ExecSteps": Steps,
    "ExecForLoop": ForLoop,
    "ExecAlwaysChanged": AlwaysChanged,
    "ExecBadExpand": BadExpand,
    "ExecIntermediate": Intermediate,
    "ExecBrokenIsChanged": BrokenIsChanged,
    "ExecHidden": Hidden,
    "ExecRawLink": RawLink,
    "ExecCounter": Counter,
    "ExecV3Scale": V3Scale,
    "ExecV3AsyncShow": V3AsyncShow,
}


@hookimpl
def register_nodes(register: Any) -> None:
    for name, cls in NODES.items():
        register(name, cls)
