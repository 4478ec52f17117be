"""MASK nodes: solid, invert, composite, crop, grow/shrink, feather, image<->mask, threshold."""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode, KernelNode, bind

CHANNELS = ["red", "green", "blue", "alpha"]
OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def _batched(mask: Any) -> Any:
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


class _Mask(CoreNode):
    RETURN_TYPES = ("MASK",)
    CATEGORY = "image/mask"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"


class SolidMask(_Mask):
    FUNCTION = "solid"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
            }
        }

    def solid(self, value: float, width: int, height: int) -> tuple[Any]:
        import torch

        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(_Mask):
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    def invert(self, mask: Any) -> tuple[Any]:
        return (1.0 - mask,)


class MaskComposite(_Mask):
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "destination": ("MASK",),
                "source": ("MASK",),
                "x": ("INT", dict(pos)),
                "y": ("INT", dict(pos)),
                "operation": (list(OPERATIONS),),
            }
        }

    def combine(self, destination: Any, source: Any, x: int, y: int, operation: str) -> tuple[Any]:
        import torch

        out = _batched(destination).clone()
        src = _batched(source)
        h = max(0, min(out.shape[1] - y, src.shape[1]))
        w = max(0, min(out.shape[2] - x, src.shape[2]))
        if h == 0 or w == 0:
            return (out,)
        a = out[:, y : y + h, x : x + w]
        b = src[:, :h, :w].to(a)
        if operation == "multiply":
            result = a * b
        elif operation == "add":
            result = a + b
        elif operation == "subtract":
            result = a - b
        else:
            op = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
            result = op(a.round().bool(), b.round().bool()).float()
        out[:, y : y + h, x : x + w] = result
        return (out.clamp(0.0, 1.0),)


class CropMask(_Mask):
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "mask": ("MASK",),
                "x": ("INT", dict(pos)),
                "y": ("INT", dict(pos)),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
            }
        }

    def crop(self, mask: Any, x: int, y: int, width: int, height: int) -> tuple[Any]:
        return (_batched(mask)[:, y : y + height, x : x + width],)


def grow(mask: Any, expand: int, tapered_corners: bool) -> Any:
    """Dilate (``expand`` > 0) or erode (< 0) by one pixel per step; a cross kernel when tapered."""
    import torch

    out = _batched(mask).float()
    for _ in range(abs(expand)):
        padded = torch.nn.functional.pad(out.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
        h, w = out.shape[1], out.shape[2]
        shifts = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]
        if not tapered_corners:
            shifts += [(0, 0), (0, 2), (2, 0), (2, 2)]
        stack = torch.stack([padded[:, dy : dy + h, dx : dx + w] for dy, dx in shifts])
        grown = stack.amax(dim=0) if expand > 0 else stack.amin(dim=0)
        # A step that changes nothing is a fixed point: the remaining steps would not either.
        # Without this, expand=-16384 (the widget's minimum) ran 16384 steps, minutes per mask.
        if torch.equal(grown, out):
            break
        out = grown
    return out


class GrowMask(_Mask):
    FUNCTION = "expand_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "mask": ("MASK",),
                "expand": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
                "tapered_corners": ("BOOLEAN", {"default": True, "advanced": True}),
            }
        }

    def expand_mask(self, mask: Any, expand: int, tapered_corners: bool) -> tuple[Any]:
        return (grow(mask, expand, tapered_corners),)


class FeatherMask(_Mask):
    FUNCTION = "feather"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "mask": ("MASK",),
                "left": ("INT", dict(side)),
                "top": ("INT", dict(side)),
                "right": ("INT", dict(side)),
                "bottom": ("INT", dict(side)),
            }
        }

    def feather(self, mask: Any, left: int, top: int, right: int, bottom: int) -> tuple[Any]:
        out = _batched(mask).clone().float()
        h, w = out.shape[1], out.shape[2]
        left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
        for i in range(left):
            out[:, :, i] *= (i + 1.0) / left
        for i in range(right):
            out[:, :, -i - 1] *= (i + 1.0) / right
        for i in range(top):
            out[:, i, :] *= (i + 1.0) / top
        for i in range(bottom):
            out[:, -i - 1, :] *= (i + 1.0) / bottom
        return (out,)


class ImageToMask(_Mask):
    FUNCTION = "image_to_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "channel": (list(CHANNELS),)}}

    def image_to_mask(self, image: Any, channel: str) -> tuple[Any]:
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"the image has no {channel} channel")
        return (image[:, :, :, index],)


class MaskToImage(_Mask):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    def mask_to_image(self, mask: Any) -> tuple[Any]:
        return (_batched(mask).unsqueeze(-1).expand(-1, -1, -1, 3),)


class ThresholdMask(_Mask):
    FUNCTION = "image_to_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "mask": ("MASK",),
                "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def image_to_mask(self, mask: Any, value: float) -> tuple[Any]:
        return ((mask > value).float(),)


class ImageColorToMask(_Mask):
    FUNCTION = "image_to_mask"
    SEARCH_ALIASES = ["color keying", "chroma key"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        color = {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "number"}
        return {"required": {"image": ("IMAGE", {}), "color": ("INT", color)}}

    def image_to_mask(self, image: Any, color: int) -> tuple[Any]:
        """1 where the pixel, in 8-bit RGB (rounded), is exactly ``color`` (0xRRGGBB), else 0."""
        import torch

        if image.shape[-1] < 3:
            raise ValueError(f"the image needs red, green and blue channels, it has {image.shape[-1]}")
        rgb = (torch.clamp(image[..., :3], 0.0, 1.0) * 255.0).round().to(torch.int64)
        packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
        return ((packed == color).float(),)


class MaskPreview(_Mask, KernelNode):
    PUBLISH_SCHEMA_HIDDEN = True
    RETURN_TYPES = ()
    FUNCTION = "preview"
    OUTPUT_NODE = True
    SEARCH_ALIASES = ["show mask", "view mask", "inspect mask", "debug mask"]
    DESCRIPTION = "Shows the mask as a grey picture (saved to the temp folder)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK", {})}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def preview(self, mask: Any, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        from plugins.core_nodes.nodes.io import PreviewImage

        # Like the reference's mask preview: grey RGB, and no prompt in the file.
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        images = bind(PreviewImage, self.kernel())().save_images(grey)["ui"]["images"]
        return {"ui": {"images": images, "animated": (False,)}, "result": ()}


NODES: dict[str, tuple[type, str | None]] = {
    "SolidMask": (SolidMask, "Create Solid Mask"),
    "InvertMask": (InvertMask, "Invert Mask"),
    "MaskComposite": (MaskComposite, "Combine Masks"),
    "CropMask": (CropMask, "Crop Mask"),
    "GrowMask": (GrowMask, "Grow Mask"),
    "FeatherMask": (FeatherMask, "Feather Mask"),
    "ImageToMask": (ImageToMask, "Convert Image to Mask"),
    "MaskToImage": (MaskToImage, "Convert Mask to Image"),
    "ThresholdMask": (ThresholdMask, "Threshold Mask"),
    "ImageColorToMask": (ImageColorToMask, "Convert Image Color to Mask"),
    "MaskPreview": (MaskPreview, "Preview Mask"),
}
