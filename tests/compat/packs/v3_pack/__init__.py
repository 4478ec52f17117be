"""A V3 pack: comfy_entrypoint() -> ComfyExtension with a sync and an async node."""

import asyncio

from comfy_api.latest import ComfyAPI, ComfyExtension, io, ui

api = ComfyAPI()


class V3Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Scale",
            display_name="Scale (V3 pack)",
            category="compat",
            inputs=[io.Int.Input("value"), io.Int.Input("factor", default=2, min=0, max=10)],
            outputs=[io.Int.Output(display_name="scaled")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, factor):
        return True if factor != 7 else "factor 7 is not allowed"

    @classmethod
    def execute(cls, value, factor):
        return io.NodeOutput(value * factor, ui=ui.PreviewText(f"{cls.hidden.unique_id}:{value * factor}"))


class V3AsyncWait(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3AsyncWait",
            category="compat",
            inputs=[io.Int.Input("value"), io.Int.Input("steps", default=2)],
            outputs=[io.Int.Output()],
        )

    @classmethod
    async def execute(cls, value, steps):
        for step in range(steps):
            await asyncio.sleep(0.01)
            await api.execution.set_progress(step + 1, steps)
        return io.NodeOutput(value + steps)


class V3Extension(ComfyExtension):
    async def on_load(self):
        self.loaded = True

    async def get_node_list(self):
        return [V3Scale, V3AsyncWait]


async def comfy_entrypoint():
    return V3Extension()
