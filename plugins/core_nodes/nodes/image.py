"""IMAGE nodes: scaling, inverting, batching, padding for outpainting, cropping, solid images."""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.resize import CROP_METHODS, IMAGE_METHODS, upscale


class _Image(CoreNode):
    RETURN_TYPES = ("IMAGE",)
    CATEGORY = "image"


def _scale(image: Any, width: int, height: int, method: str, crop: str) -> Any:
    return upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScale(_Image):
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(IMAGE_METHODS),),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "crop": (list(CROP_METHODS),),
            }
        }

    def upscale(self, image: Any, upscale_method: str, width: int, height: int, crop: str) -> tuple[Any]:
        if width == 0 and height == 0:
            return (image,)
        if width == 0:
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (_scale(image, width, height, upscale_method, crop),)


class ImageScaleBy(_Image):
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(IMAGE_METHODS),),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    def upscale(self, image: Any, upscale_method: str, scale_by: float) -> tuple[Any]:
        width = max(1, round(image.shape[2] * scale_by))
        height = max(1, round(image.shape[1] * scale_by))
        return (_scale(image, width, height, upscale_method, "disabled"),)


class ImageInvert(_Image):
    FUNCTION = "invert"
    CATEGORY = "image/color"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image: Any) -> tuple[Any]:
        return (1.0 - image,)


class ImageBatch(_Image):
    FUNCTION = "batch"
    CATEGORY = "image/batch"
    DEPRECATED = True  # as in the reference (superseded by BatchImagesNode): hidden from search

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    def batch(self, image1: Any, image2: Any) -> tuple[Any]:
        import torch

        if image1.shape[1:] != image2.shape[1:]:
            image2 = _scale(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
            if image2.shape[-1] != image1.shape[-1]:
                image2 = image2[..., : image1.shape[-1]]
        return (torch.cat((image1, image2), dim=0),)


def outpaint_mask(
    height: int, width: int, top: int, bottom: int, left: int, right: int, feathering: int
) -> Any:
    """1 over the new border, fading (quadratically) into the original image over ``feathering`` px."""
    import torch

    mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
    inner = torch.zeros((height, width), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        rows = torch.arange(height, dtype=torch.float32).unsqueeze(1).expand(height, width)
        cols = torch.arange(width, dtype=torch.float32).unsqueeze(0).expand(height, width)
        big_h = torch.full_like(rows, float(height))
        big_w = torch.full_like(cols, float(width))
        # Distance to the nearest side that gets padding; unpadded sides never fade.
        distance = torch.stack(
            [
                rows if top else big_h,
                height - rows if bottom else big_h,
                cols if left else big_w,
                width - cols if right else big_w,
            ]
        ).amin(dim=0)
        fade = ((feathering - distance) / feathering).clamp(min=0.0)
        inner = torch.where(distance < feathering, fade * fade, inner)
    mask[top : top + height, left : left + width] = inner
    return mask


class ImagePadForOutpaint(CoreNode):
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image/transform"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "image": ("IMAGE",),
                "left": ("INT", dict(side)),
                "top": ("INT", dict(side)),
                "right": ("INT", dict(side)),
                "bottom": ("INT", dict(side)),
                "feathering": (
                    "INT",
                    {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1, "advanced": True},
                ),
            }
        }

    def expand_image(
        self, image: Any, left: int, top: int, right: int, bottom: int, feathering: int
    ) -> tuple[Any, Any]:
        import torch

        b, h, w, c = image.shape
        padded = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        padded[:, top : top + h, left : left + w, :] = image
        mask = outpaint_mask(h, w, top, bottom, left, right, feathering)
        return (padded, mask.unsqueeze(0))


class ImageCrop(_Image):
    FUNCTION = "crop"
    CATEGORY = "image/transform"
    DEPRECATED = True  # as in the reference (superseded by ImageCropV2): hidden from search
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        pos = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "image": ("IMAGE",),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "x": ("INT", dict(pos)),
                "y": ("INT", dict(pos)),
            }
        }

    def crop(self, image: Any, width: int, height: int, x: int, y: int) -> tuple[Any]:
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :],)


class EmptyImage(_Image):
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            }
        }

    def generate(self, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple[Any]:
        import torch

        rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        image = torch.tensor(rgb, dtype=torch.float32).expand(batch_size, height, width, 3).clone()
        return (image,)


class RebatchImages(_Image):
    FUNCTION = "rebatch"
    CATEGORY = "image/batch"
    INPUT_IS_LIST = True
    OUTPUT_IS_LIST = (True,)
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_rebatch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",), "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}
        }

    def rebatch(self, images: list[Any], batch_size: list[int]) -> tuple[list[Any]]:
        import torch

        size = int(batch_size[0])
        singles = [item.unsqueeze(0) for batch in images for item in batch]
        batches: list[Any] = []
        for start in range(0, len(singles), size):
            group = singles[start : start + size]
            first = group[0]
            group = [
                g
                if g.shape[1:] == first.shape[1:]
                else _scale(g, first.shape[2], first.shape[1], "bilinear", "center")
                for g in group
            ]
            batches.append(torch.cat(group, dim=0))
        return (batches,)


NODES: dict[str, tuple[type, str | None]] = {
    "ImageScale": (ImageScale, "Upscale Image"),
    "ImageScaleBy": (ImageScaleBy, "Upscale Image By"),
    "ImageInvert": (ImageInvert, "Invert Image Colors"),
    "ImageBatch": (ImageBatch, "Batch Images (DEPRECATED)"),
    "ImagePadForOutpaint": (ImagePadForOutpaint, "Pad Image for Outpainting"),
    "ImageCrop": (ImageCrop, "Crop Image (DEPRECATED)"),
    "EmptyImage": (EmptyImage, "Empty Image"),
    "RebatchImages": (RebatchImages, "Rebatch Images"),
}
