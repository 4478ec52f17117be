"""Test node pack: prompts that try to take the server down (tests/kernel/test_hostile_prompts.py).

Inline (``("hostile", tests.nodepack.hostile)``) or, for tests of a real server process, through
``COMFYKERNEL_EXTRA_PLUGINS=hostile=tests.nodepack.hostile``.

* ``HostileImage`` / ``HostileInvert``: real image tensors (``[1, size, size, 3]`` float32), each
  invert allocating a new one; every tensor made is tracked by weak reference so a test can
  count how many a run still holds (``HostileAlive``).
* ``HostileCloneLoop``: expands into one invert plus a copy of itself, ``remaining`` times: a
  loop that, left alone, grows the graph and the process without end.
* ``HostileKillSelf``: SIGKILLs its own process (a prompt that crashes the server).
* ``HostileWaitFile``: waits until a file exists (interruptibly), to hold a queue back.
* ``HostileBlock``: sleeps without ever checking for interruption (a long native call).
"""

from __future__ import annotations

import os
import signal
import time
import weakref
from pathlib import Path
from typing import Any

from kernel import hookimpl
from kernel.nodes import GraphBuilder
from tests.nodepack.common import interruptible_sleep

# Every tensor HostileImage / HostileInvert made in this process, while something holds it.
_MADE: weakref.WeakSet[Any] = weakref.WeakSet()


def alive_images() -> int:
    return len(_MADE)


class HostileImage:
    CATEGORY = "test/hostile"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"size": ("INT", {"default": 512, "min": 1, "max": 4096}), "seed": ("INT", {})}}

    def run(self, size: int, seed: int) -> tuple[Any]:
        import torch

        image = torch.full((1, size, size, 3), float(seed % 7) / 7.0)
        _MADE.add(image)
        return (image,)


class HostileInvert:
    CATEGORY = "test/hostile"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image: Any) -> tuple[Any]:
        inverted = 1.0 - image
        _MADE.add(inverted)
        return (inverted,)


class HostileCloneLoop:
    """Loop packs' way: the clone links to the same source as this node (read from DYNPROMPT)."""

    CATEGORY = "test/hostile"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"image": ("IMAGE",), "remaining": ("INT", {"default": 10, "min": 0, "max": 10**9})},
            "hidden": {"unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT"},
        }

    def run(self, image: Any, remaining: int, unique_id: str, dynprompt: Any) -> Any:
        if remaining <= 0:
            return (image,)
        source = dynprompt.get_node(unique_id)["inputs"]["image"]
        graph = GraphBuilder()
        inverted = graph.node("HostileInvert", image=source)
        again = graph.node("HostileCloneLoop", image=inverted.out(0), remaining=remaining - 1)
        return {"result": (again.out(0),), "expand": graph.finalize()}


class HostileAlive:
    """Output node: how many tracked image tensors are alive while it runs."""

    CATEGORY = "test/hostile"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image: Any) -> dict[str, Any]:
        return {"ui": {"alive": [alive_images()], "mean": [float(image.mean())]}}


class HostileKillSelf:
    CATEGORY = "test/hostile"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"log_path": ("STRING", {"default": ""})}}

    def run(self, log_path: str) -> dict[str, Any]:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write("kill\n")
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached
        return {"ui": {}}


class HostileWaitFile:
    CATEGORY = "test/hostile"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"path": ("STRING", {"default": ""}), "tag": ("STRING", {"default": ""})}}

    def run(self, path: str, tag: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while not Path(path).exists() and time.monotonic() < deadline:
            interruptible_sleep(0.02)
        return {"ui": {"text": [tag]}}


class HostileBlock:
    CATEGORY = "test/hostile"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seconds": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 3600.0})}}

    def run(self, seconds: float) -> dict[str, Any]:
        time.sleep(seconds)  # deliberately deaf to interruption
        return {"ui": {"slept": [seconds]}}


NODES = {
    "HostileImage": HostileImage,
    "HostileInvert": HostileInvert,
    "HostileCloneLoop": HostileCloneLoop,
    "HostileAlive": HostileAlive,
    "HostileKillSelf": HostileKillSelf,
    "HostileWaitFile": HostileWaitFile,
    "HostileBlock": HostileBlock,
}


@hookimpl
def register_nodes(register: Any) -> None:
    for name, cls in NODES.items():
        register(name, cls)
