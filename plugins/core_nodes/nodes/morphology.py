"""Morphology and colour-space nodes: erode/dilate/open/close/gradient/top-hat, RGB<->YUV (group A).

Both use kornia, as the reference does: a flat square kernel for the morphology, and
``rgb_to_ycbcr`` / ``ycbcr_to_rgb`` (BT.601, chroma centred on 0.5) for the colour nodes.
"""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import CoreNode

OPERATIONS = ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]


class _Morphology(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_morphology"


class Morphology(_Morphology):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "process"
    CATEGORY = "image/filters"
    SEARCH_ALIASES = ["erode", "dilate"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE", {}),
                "operation": (list(OPERATIONS),),
                "kernel_size": ("INT", {"default": 3, "min": 3, "max": 999, "step": 1}),
            }
        }

    def process(self, image: Any, operation: str, kernel_size: int) -> tuple[Any]:
        """``operation`` with a ``kernel_size`` square of ones, on every channel separately."""
        import torch
        from kornia import morphology

        ops = {
            "erode": morphology.erosion,
            "dilate": morphology.dilation,
            "open": morphology.opening,
            "close": morphology.closing,
            "gradient": morphology.gradient,
            "top_hat": morphology.top_hat,
            "bottom_hat": morphology.bottom_hat,
        }
        if operation not in ops:
            raise ValueError(f"unknown morphology operation {operation!r}; one of {OPERATIONS}")
        kernel = torch.ones(kernel_size, kernel_size, device=image.device)
        return (ops[operation](image.movedim(-1, 1), kernel).movedim(1, -1),)


class ImageRGBToYUV(_Morphology):
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("Y", "U", "V")
    FUNCTION = "execute"
    CATEGORY = "image/color"
    SEARCH_ALIASES = ["color space conversion"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {})}}

    def execute(self, image: Any) -> tuple[Any, Any, Any]:
        """Y, U (Cb) and V (Cr) each as a grey image of the input's shape."""
        import kornia.color

        if image.shape[-1] != 3:
            raise ValueError(f"RGB to YUV needs a 3-channel image, got {image.shape[-1]} channels")
        yuv = kornia.color.rgb_to_ycbcr(image.movedim(-1, 1)).movedim(1, -1)
        return tuple(yuv[..., i : i + 1].expand_as(image) for i in range(3))  # type: ignore[return-value]


class ImageYUVToRGB(_Morphology):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = "image/color"
    SEARCH_ALIASES = ["color space conversion"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"Y": ("IMAGE", {}), "U": ("IMAGE", {}), "V": ("IMAGE", {})}}

    def execute(self, Y: Any, U: Any, V: Any) -> tuple[Any]:  # noqa: N803 - the reference's input names
        """Each plane is the mean of its image's channels (so any grey or coloured image works)."""
        import kornia.color
        import torch

        shapes = {tuple(t.shape[:3]) for t in (Y, U, V)}
        if len(shapes) != 1:
            raise ValueError(f"Y, U and V must have the same batch and size, got {sorted(shapes)}")
        planes = torch.cat([t.mean(dim=-1, keepdim=True) for t in (Y, U, V)], dim=-1)
        return (kornia.color.ycbcr_to_rgb(planes.movedim(-1, 1)).movedim(1, -1),)


NODES: dict[str, tuple[type, str | None]] = {
    "ImageRGBToYUV": (ImageRGBToYUV, "Image RGB to YUV"),
    "ImageYUVToRGB": (ImageYUVToRGB, "Image YUV to RGB"),
    "Morphology": (Morphology, "Apply Morphology"),
}
