"""A single-file pack with an async V1 node reporting progress through ComfyAPISync."""

import asyncio

from comfy_api.v0_0_2 import ComfyAPISync

api = ComfyAPISync()


class SingleAsyncAdd:
    CATEGORY = "compat"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT", {"default": 1})}}

    async def run(self, a, b):
        await asyncio.sleep(0.01)
        api.execution.set_progress(1, 1)
        return (a + b,)


NODE_CLASS_MAPPINGS = {"SingleAsyncAdd": SingleAsyncAdd}
