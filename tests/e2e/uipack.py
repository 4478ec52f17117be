"""A tiny node pack for the browser test: a solid-colour IMAGE and a node saving it as PNG.

The real core nodes are another plugin's job; these two are enough for the UI to build a graph,
run it with progress, and show an output image served by ``/view``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from kernel.progress import ProgressBar

if TYPE_CHECKING:
    from kernel import Kernel


class SolidColor:
    """An IMAGE batch of one colour; reports one progress step per row band."""

    CATEGORY = "e2e"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        channel = {"default": 128, "min": 0, "max": 255}
        return {
            "required": {
                "width": ("INT", {"default": 64, "min": 8, "max": 512, "step": 8}),
                "height": ("INT", {"default": 64, "min": 8, "max": 512, "step": 8}),
                "red": ("INT", channel),
                "green": ("INT", channel),
                "blue": ("INT", channel),
                "steps": ("INT", {"default": 4, "min": 1, "max": 100}),
            }
        }

    def run(self, width: int, height: int, red: int, green: int, blue: int, steps: int) -> tuple[Any]:
        import torch

        bar = ProgressBar(steps)
        for i in range(steps):
            time.sleep(0.15)  # slow enough for the UI to render the progress bar
            bar.update_absolute(i + 1, steps)
        colour = torch.tensor([red, green, blue], dtype=torch.float32) / 255.0
        return (colour.expand(1, height, width, 3).clone(),)


def make_save_node(kernel: Kernel) -> type:
    """The output node writes into this server's output directory."""

    class SaveSolid:
        CATEGORY = "e2e"
        RETURN_TYPES = ()
        FUNCTION = "save"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "e2e"})}}

        def save(self, images: Any, filename_prefix: str) -> dict[str, Any]:
            import numpy as np
            from PIL import Image

            out = kernel.settings.output_path
            out.mkdir(parents=True, exist_ok=True)
            results = []
            for index, image in enumerate(images):
                array = (image.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
                name = f"{filename_prefix}_{time.time_ns()}_{index:02d}.png"
                Image.fromarray(array).save(out / name)
                results.append({"filename": name, "subfolder": "", "type": "output"})
            return {"ui": {"images": results}}

    return SaveSolid


@hookimpl
def register_nodes(register: Any, kernel: Kernel) -> None:
    register("E2ESolidColor", SolidColor, display_name="E2E Solid Color")
    register("E2ESaveImage", make_save_node(kernel), display_name="E2E Save Image")
