"""A V1 pack in the reference's folder layout, importing only ComfyUI module names."""

import comfy.model_management
import comfy.utils
import folder_paths
from aiohttp import web
from comfy.comfy_types import IO, ComfyNodeABC, InputTypeDict
from comfy_execution.graph import ExecutionBlocker
from nodes import MAX_RESOLUTION, PrimitiveInt
from server import BinaryEventTypes, PromptServer

from .helpers import double

WEB_DIRECTORY = "./js"


@PromptServer.instance.routes.get("/basic_pack/hello")
async def hello(request):
    return web.json_response(
        {"hello": "basic_pack", "nodes": "BasicDouble" in __import__("nodes").NODE_CLASS_MAPPINGS}
    )


class BasicDouble(ComfyNodeABC):
    CATEGORY = "compat"
    RETURN_TYPES = (IO.INT,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypeDict:
        return {"required": {"value": (IO.INT, {"default": 1, "min": -100, "max": MAX_RESOLUTION})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        if value == 13:
            return "13 is unlucky"
        return True

    def run(self, value):
        return (double(value),)


class BasicShow:
    CATEGORY = "compat"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    def run(self, value):
        return {"ui": {"value": [value]}}


class BasicCounter:
    """IS_CHANGED: re-runs whenever the `token` input changes, even though its output would not."""

    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    calls = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"token": ("STRING", {"default": "a"})}}

    @classmethod
    def IS_CHANGED(cls, token):
        return token

    def run(self, token):
        type(self).calls += 1
        return (type(self).calls,)


class BasicLazySwitch:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "use_a": ("BOOLEAN", {"default": True}),
                "a": ("INT", {"lazy": True}),
                "b": ("INT", {"lazy": True}),
            }
        }

    def check_lazy_status(self, use_a, a=None, b=None):
        wanted = "a" if use_a else "b"
        return [wanted] if (a if use_a else b) is None else []

    def run(self, use_a, a=None, b=None):
        return (a if use_a else b,)


class BasicGate:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "open": ("BOOLEAN", {"default": True})}}

    def run(self, value, open):
        return (value if open else ExecutionBlocker(None),)


class BasicProgress:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, steps, unique_id):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)
        server = PromptServer.instance
        server.send_sync("basic_pack.done", {"node": unique_id, "steps": steps}, server.client_id)
        server.send_sync(BinaryEventTypes.TEXT, b"basic_pack", server.client_id)
        return (steps,)


class BasicModels:
    CATEGORY = "compat"
    RETURN_TYPES = ("STRING", "STRING")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def run(self, ckpt_name):
        return (
            folder_paths.get_full_path_or_raise("checkpoints", ckpt_name),
            folder_paths.get_output_directory(),
        )


class BasicPlusOne(PrimitiveInt):
    """Subclasses a core node imported from `nodes`."""

    def execute(self, value):
        (result,) = super().execute(value)
        return (result + 1,)


class FakeKSampler:
    CATEGORY = "compat"
    RETURN_TYPES = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ()


NODE_CLASS_MAPPINGS = {
    "BasicDouble": BasicDouble,
    "BasicShow": BasicShow,
    "BasicCounter": BasicCounter,
    "BasicLazySwitch": BasicLazySwitch,
    "BasicGate": BasicGate,
    "BasicProgress": BasicProgress,
    "BasicModels": BasicModels,
    "BasicPlusOne": BasicPlusOne,
    # Clashes with the core node: the core one must win.
    "KSampler": FakeKSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {"BasicDouble": "Double It (basic pack)"}
