"""Image nodes beyond the basics: flips, rotations, crops, stitching, batches, tiles, animated saving, image compare, Canny, colour and bounding boxes (group A).

The reference declares these with its V3 schema; here they are classic classes publishing the
same interface. Method names are the reference's V1 ones, for packs that call them.
"""

from __future__ import annotations

import copy
import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from plugins.core_nodes.nodes import bounding_boxes, image_formats
from plugins.core_nodes.nodes.common import MAX_RESOLUTION, MAX_SEED, CoreNode, KernelNode, bind
from plugins.core_nodes.nodes.io import PreviewImage, save_path, to_pil

# The WebSocket binary event the frontend shows as a text under a node (the reference's TEXT).
_PROGRESS_TEXT = 3
_HIDDEN_METADATA = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
# The value each spacing colour fills the channels with: a grey level for all RGB, or an RGB triple.
_SPACING_COLORS: dict[str, float | tuple[float, float, float]] = {
    "white": 1.0,
    "black": 0.0,
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
}
_SAVE_FORMATS: list[dict[str, Any]] = [
    {
        "key": "png",
        "inputs": {
            "required": {
                "bit_depth": [
                    "COMBO",
                    {
                        "advanced": True,
                        "default": "8-bit",
                        "multiselect": False,
                        "options": ["8-bit", "16-bit"],
                    },
                ],
                "input_color_space": [
                    "COMBO",
                    {"advanced": True, "default": "sRGB", "multiselect": False, "options": ["sRGB"]},
                ],
            }
        },
    },
    {
        "key": "exr",
        "inputs": {
            "required": {
                "bit_depth": [
                    "COMBO",
                    {
                        "advanced": True,
                        "default": "32-bit float",
                        "multiselect": False,
                        "options": ["32-bit float"],
                    },
                ],
                "input_color_space": [
                    "COMBO",
                    {
                        "advanced": True,
                        "default": "sRGB",
                        "multiselect": False,
                        "options": ["sRGB", "HDR", "linear"],
                    },
                ],
            }
        },
    },
]


def _image() -> tuple[str, dict[str, Any]]:
    return ("IMAGE", {})


def _resize(image: Any, width: int, height: int, method: str) -> Any:
    """``[B, H, W, C]`` resized (no crop) with the upscale nodes' methods."""
    from plugins.core_nodes.nodes.resize import upscale

    return upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


def _preview(kernel: Any, images: Any) -> list[dict[str, str]]:
    """``images`` saved as a temp preview the way PreviewImage saves them (no metadata)."""
    return bind(PreviewImage, kernel)().save_images(images)["ui"]["images"]


class _Images(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_images"
    RETURN_TYPES = ("IMAGE",)


class GetImageSize(_Images, KernelNode):
    PUBLISH_SCHEMA_HIDDEN = True
    RETURN_TYPES = ("INT", "INT", "INT")
    RETURN_NAMES = ("width", "height", "batch_size")
    FUNCTION = "get_size"
    CATEGORY = "image"
    DESCRIPTION = "The width, height and batch size of an image."
    SEARCH_ALIASES = ["dimensions", "resolution", "image info"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": _image()}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def get_size(self, image: Any, unique_id: str | None = None) -> tuple[int, int, int]:
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        if unique_id:
            self._show(f"width: {width}, height: {height}\n batch size: {batch}", str(unique_id))
        return width, height, batch

    def _show(self, text: str, node_id: str) -> None:
        """The size as text on the node: a binary frame of the node id's length, the id, the text."""
        from kernel.events import ServerMessage

        node = node_id.encode()
        payload = struct.pack(">I", len(node)) + node + text.encode()
        message = ServerMessage(
            type=str(_PROGRESS_TEXT), data=payload, broadcast=True, binary_type=_PROGRESS_TEXT
        )
        self.kernel().bus.publish_threadsafe(message)


class ImageAddNoise(_Images):
    FUNCTION = "repeat"
    CATEGORY = "image/filters"
    SEARCH_ALIASES = ["film grain"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _image(),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
                "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def repeat(self, image: Any, seed: int, strength: float) -> tuple[Any]:
        import torch

        # A CPU generator seeded like the reference's global one draws the same numbers.
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return (torch.clip(image + strength * noise, min=0.0, max=1.0),)


class ImageCropV2(_Images, KernelNode):
    FUNCTION = "crop"
    CATEGORY = "image/transform"
    HAS_INTERMEDIATE_OUTPUT = True
    SEARCH_ALIASES = ["crop", "cut", "trim"]
    DESCRIPTION = "Cuts the region of the image given by a bounding box."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        region = {"x": 0, "y": 0, "width": 512, "height": 512}
        return {
            "required": {
                "image": _image(),
                "crop_region": (
                    "BOUNDING_BOX",
                    {"default": region, "socketless": True, "component": "ImageCrop"},
                ),
            }
        }

    def crop(self, image: Any, crop_region: Any) -> dict[str, Any]:
        if not isinstance(crop_region, dict):
            raise ValueError(
                f"crop_region must be a bounding box {{x, y, width, height}}, got {crop_region!r}"
            )
        x, y, width, height = (
            int(crop_region.get(k, d)) for k, d in (("x", 0), ("y", 0), ("width", 512), ("height", 512))
        )
        # The corner stays inside the image, so the crop is never empty.
        x = max(0, min(x, image.shape[2] - 1))
        y = max(0, min(y, image.shape[1] - 1))
        out = image[:, y : y + height, x : x + width, :]
        return {"ui": {"images": _preview(self.kernel(), out), "animated": (False,)}, "result": (out,)}


class PrimitiveBoundingBox(_Images):
    RETURN_TYPES = ("BOUNDING_BOX",)
    FUNCTION = "box"
    CATEGORY = "utilities/primitive"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION}),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION}),
            }
        }

    def box(self, x: int, y: int, width: int, height: int) -> tuple[dict[str, int]]:
        return ({"x": x, "y": y, "width": width, "height": height},)


class ImageFlip(_Images):
    FUNCTION = "flip"
    CATEGORY = "image/transform"
    SEARCH_ALIASES = ["mirror", "reflect"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"image": _image(), "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}
        }

    def flip(self, image: Any, flip_method: str) -> tuple[Any]:
        import torch

        # Flipping about the x axis turns the picture upside down (rows); about y, left-right.
        dim = 1 if flip_method.startswith("x") else 2
        return (torch.flip(image, dims=[dim]),)


class ImageRotate(_Images):
    FUNCTION = "rotate"
    CATEGORY = "image/transform"
    SEARCH_ALIASES = ["turn", "flip orientation"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _image(),
                "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],),
            }
        }

    def rotate(self, image: Any, rotation: str) -> tuple[Any]:
        import torch

        quarter_turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        # dims (W, H): clockwise on the picture.
        return (torch.rot90(image, k=quarter_turns, dims=[2, 1]),)


class RepeatImageBatch(_Images):
    FUNCTION = "repeat"
    CATEGORY = "image/batch"
    SEARCH_ALIASES = ["duplicate image", "clone image"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": _image(), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def repeat(self, image: Any, amount: int) -> tuple[Any]:
        return (image.repeat((amount, 1, 1, 1)),)


class ImageFromBatch(_Images):
    FUNCTION = "frombatch"
    CATEGORY = "image/batch"
    SEARCH_ALIASES = ["select image", "pick from batch", "extract image"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _image(),
                "batch_index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION}),
                "length": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    def frombatch(self, image: Any, batch_index: int, length: int) -> tuple[Any]:
        size = image.shape[0]
        if batch_index < 0:  # counted from the end
            batch_index += size
        batch_index = max(0, min(size - 1, batch_index))
        length = min(size - batch_index, length)
        return (image[batch_index : batch_index + length].clone(),)


class ImageStitch(_Images):
    FUNCTION = "stitch"
    CATEGORY = "image/transform"
    DESCRIPTION = (
        "Joins image2 to image1 on the chosen side, with optional spacing; image1 alone passes through."
    )
    SEARCH_ALIASES = ["combine images", "join images", "concatenate images", "side by side"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image1": _image(),
                "direction": (["right", "down", "left", "up"], {"default": "right"}),
                "match_image_size": ("BOOLEAN", {"default": True}),
                "spacing_width": ("INT", {"advanced": True, "default": 0, "min": 0, "max": 1024, "step": 2}),
                "spacing_color": (list(_SPACING_COLORS), {"advanced": True, "default": "white"}),
            },
            "optional": {"image2": _image()},
        }

    def stitch(
        self,
        image1: Any,
        direction: str,
        match_image_size: bool,
        spacing_width: int,
        spacing_color: str,
        image2: Any = None,
    ) -> tuple[Any]:
        import torch

        if image2 is None:
            return (image1,)
        image1, image2 = _same_batch(image1, image2)
        sideways = direction in ("left", "right")
        if match_image_size:
            # image2 takes image1's height (sideways) or width, keeping its aspect ratio.
            h1, w1 = image1.shape[1:3]
            h2, w2 = image2.shape[1:3]
            aspect = w2 / h2
            size = (int(h1 * aspect), h1) if sideways else (w1, int(w1 / aspect))
            image2 = _resize(image2, size[0], size[1], "lanczos")
        color = _SPACING_COLORS[spacing_color]
        if not match_image_size:
            fill = color if isinstance(color, float) else 0.0
            axis = 1 if sideways else 2  # the side that must agree: heights when joined sideways
            image1, image2 = _pad_centered(image1, image2, axis, fill)
        image1, image2 = _same_channels(image1, image2)
        parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            spacing_width += spacing_width % 2
            parts.insert(1, _spacing(image1, image2, spacing_width, sideways, color))
        return (torch.cat(parts, dim=2 if sideways else 1),)


def _same_batch(a: Any, b: Any) -> tuple[Any, Any]:
    """The shorter batch is lengthened with copies of its last image."""
    import torch

    size = max(a.shape[0], b.shape[0])

    def grow(t: Any) -> Any:
        return t if t.shape[0] == size else torch.cat([t, t[-1:].repeat(size - t.shape[0], 1, 1, 1)])

    return grow(a), grow(b)


def _pad_centered(a: Any, b: Any, axis: int, fill: float) -> tuple[Any, Any]:
    """The smaller of ``a`` and ``b`` along ``axis`` (1: height, 2: width) padded evenly on both sides."""
    import torch

    size = max(a.shape[axis], b.shape[axis])

    def pad(t: Any) -> Any:
        missing = size - t.shape[axis]
        if missing == 0:
            return t
        before, after = missing // 2, missing - missing // 2
        widths = (0, 0, 0, 0, before, after) if axis == 1 else (0, 0, before, after)
        return torch.nn.functional.pad(t, widths, mode="constant", value=fill)

    return pad(a), pad(b)


def _same_channels(a: Any, b: Any) -> tuple[Any, Any]:
    """The image with fewer channels gets extra ones filled with 1 (an opaque alpha)."""
    import torch

    count = max(a.shape[-1], b.shape[-1])

    def widen(t: Any) -> Any:
        if t.shape[-1] == count:
            return t
        return torch.cat(
            [t, torch.ones(*t.shape[:-1], count - t.shape[-1], device=t.device, dtype=t.dtype)], dim=-1
        )

    return widen(a), widen(b)


def _spacing(a: Any, b: Any, width: int, sideways: bool, color: float | tuple[float, ...]) -> Any:
    import torch

    if sideways:
        shape = (a.shape[0], max(a.shape[1], b.shape[1]), width, a.shape[-1])
    else:
        shape = (a.shape[0], width, max(a.shape[2], b.shape[2]), a.shape[-1])
    spacing = torch.zeros(shape, device=a.device, dtype=a.dtype)
    if isinstance(color, tuple):
        for i, value in enumerate(color[: shape[-1]]):
            spacing[..., i] = value
    else:
        spacing[..., : min(3, shape[-1])] = color
    if shape[-1] == 4:
        spacing[..., 3] = 1.0
    return spacing


class ResizeAndPadImage(_Images):
    FUNCTION = "resize_and_pad"
    CATEGORY = "image/transform"
    SEARCH_ALIASES = ["fit to size"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "image": _image(),
                "target_width": ("INT", dict(size)),
                "target_height": ("INT", dict(size)),
                "padding_color": (["white", "black"], {"advanced": True}),
                "interpolation": (
                    ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"],
                    {"advanced": True},
                ),
            }
        }

    def resize_and_pad(
        self, image: Any, target_width: int, target_height: int, padding_color: str, interpolation: str
    ) -> tuple[Any]:
        import torch

        batch, height, width, channels = image.shape
        scale = min(target_width / width, target_height / height)
        new_w, new_h = int(width * scale), int(height * scale)
        if new_w < 1 or new_h < 1:
            raise ValueError(
                f"a {width}x{height} image fitted into {target_width}x{target_height} has no pixels left"
            )
        resized = _resize(image, new_w, new_h, interpolation)
        fill = 0.0 if padding_color == "black" else 1.0
        out = torch.full(
            (batch, target_height, target_width, channels), fill, dtype=image.dtype, device=image.device
        )
        top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
        out[:, top : top + new_h, left : left + new_w, :] = resized.to(out)
        return (out,)


class ImageScaleToMaxDimension(_Images):
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        # "bilinear" twice, as the reference lists it (saved workflows store the name, not the index).
        methods = ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]
        return {
            "required": {
                "image": _image(),
                "upscale_method": (methods,),
                "largest_size": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def upscale(self, image: Any, upscale_method: str, largest_size: int) -> tuple[Any]:
        height, width = image.shape[1], image.shape[2]
        if height > width:
            width, height = round(width / height * largest_size), largest_size
        elif width > height:
            width, height = largest_size, round(height / width * largest_size)
        else:
            width = height = largest_size
        if width < 1 or height < 1:
            raise ValueError(f"largest_size {largest_size} leaves a {width}x{height} image")
        return (_resize(image, width, height, upscale_method),)


def tile_grid(
    width: int, height: int, tile_width: int, tile_height: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each tile, row by row. Tiles step by the tile size less the overlap
    (at least a quarter tile); the last of a row or column is moved back to end at the edge."""
    stride_x = round(max(tile_width * 0.25, tile_width - overlap))
    stride_y = round(max(tile_height * 0.25, tile_height - overlap))
    tiles = []
    y = 0
    while y < height:
        y1 = min(y + tile_height, height)
        y0 = max(0, y1 - tile_height)
        x = 0
        while x < width:
            x1 = min(x + tile_width, width)
            tiles.append((max(0, x1 - tile_width), y0, x1, y1))
            if x1 >= width:
                break
            x += stride_x
        if y1 >= height:
            break
        y += stride_y
    return tiles


class SplitImageToTileList(_Images):
    FUNCTION = "split"
    CATEGORY = "image/batch"
    OUTPUT_IS_LIST = (True,)
    DESCRIPTION = "Cuts an image into a list of overlapping tiles."
    SEARCH_ALIASES = ["split image", "tile image", "slice image"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _image(),
                "tile_width": ("INT", {"default": 1024, "min": 64, "max": MAX_RESOLUTION}),
                "tile_height": ("INT", {"default": 1024, "min": 64, "max": MAX_RESOLUTION}),
                "overlap": ("INT", {"default": 128, "min": 0, "max": 4096}),
            }
        }

    def split(self, image: Any, tile_width: int, tile_height: int, overlap: int) -> tuple[list[Any]]:
        grid = tile_grid(image.shape[2], image.shape[1], tile_width, tile_height, overlap)
        return ([image[:, y0:y1, x0:x1, :] for x0, y0, x1, y1 in grid],)


class ImageMergeTileList(_Images):
    FUNCTION = "merge"
    CATEGORY = "image/batch"
    INPUT_IS_LIST = True
    SEARCH_ALIASES = ["split image", "tile image", "slice image"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image_list": _image(),
                "final_width": ("INT", {"default": 1024, "min": 64, "max": 32768}),
                "final_height": ("INT", {"default": 1024, "min": 64, "max": 32768}),
                "overlap": ("INT", {"default": 128, "min": 0, "max": 4096}),
            }
        }

    def merge(
        self, image_list: list[Any], final_width: list[int], final_height: list[int], overlap: list[int]
    ) -> tuple[Any]:
        """Tiles laid out on the grid SplitImageToTileList cuts (the first tile's size), blended
        where they overlap with a sine window that falls to nearly zero at tile edges."""
        import torch

        if not image_list:
            raise ValueError("image_list is empty: there are no tiles to merge")
        width, height, ovlp = final_width[0], final_height[0], overlap[0]
        first = image_list[0]
        batch, tile_h, tile_w, channels = first.shape
        kw = {"device": first.device, "dtype": first.dtype}
        canvas = torch.zeros((batch, height, width, channels), **kw)
        weights = torch.zeros((batch, height, width, 1), **kw)
        if ovlp > 0:
            window_y = torch.sin(math.pi * torch.linspace(0, 1, tile_h, **kw)).clamp(min=1e-5)
            window_x = torch.sin(math.pi * torch.linspace(0, 1, tile_w, **kw)).clamp(min=1e-5)
            window = (window_y[:, None] * window_x[None, :])[None, :, :, None]
        else:
            window = torch.ones((1, tile_h, tile_w, 1), **kw)
        for tile, (x0, y0, x1, y1) in zip(
            image_list, tile_grid(width, height, tile_w, tile_h, ovlp), strict=False
        ):
            h = min(y1 - y0, tile.shape[1])
            w = min(x1 - x0, tile.shape[2])
            part = window[:, :h, :w, :]
            canvas[:, y0 : y0 + h, x0 : x0 + w, :] += tile[:, :h, :w, :].to(canvas) * part
            weights[:, y0 : y0 + h, x0 : x0 + w, :] += part
        weights[weights == 0] = 1.0
        return (canvas / weights,)


# --- saving -------------------------------------------------------------------------------------


class _Saver(_Images, KernelNode):
    PUBLISH_SCHEMA_HIDDEN = True
    RETURN_NAMES = ("images",)
    OUTPUT_NODE = True
    CATEGORY = "image"

    def _target(self, images: Any, filename_prefix: str) -> tuple[Any, str, int, str]:
        from kernel.paths import type_root

        if images.shape[0] == 0:
            raise ValueError("there are no images to save (the batch is empty)")
        root = type_root(self.kernel(), "output")
        folder, filename, counter, subfolder = save_path(
            root, filename_prefix, images.shape[2], images.shape[1]
        )
        folder.mkdir(parents=True, exist_ok=True)
        return folder, filename, counter, subfolder

    def _metadata_off(self) -> bool:
        return bool(self.kernel().settings.disable_metadata)

    def _save_animation(
        self,
        images: Any,
        filename_prefix: str,
        extension: str,
        fps: float,
        options: Callable[[Any], dict[str, Any]],
    ) -> dict[str, Any]:
        """``images`` as one animated file of ``extension``, ``fps`` frames a second, with the
        format's save ``options`` (made from the first frame); the node's UI and result."""
        folder, filename, counter, subfolder = self._target(images, filename_prefix)
        frames = [to_pil(image) for image in images]
        name = f"{filename}_{counter:05}_.{extension}"
        frames[0].save(
            folder / name,
            save_all=True,
            append_images=frames[1:],
            duration=int(1000.0 / fps),
            **options(frames[0]),
        )
        entry = {"filename": name, "subfolder": subfolder, "type": "output"}
        return {"ui": _animated_ui(entry, len(frames)), "result": (images,)}


def _animation_inputs(**options: Any) -> dict[str, Any]:
    """The animated savers' inputs: images, prefix and frame rate, then the format's ``options``."""
    return {
        "required": {
            "images": _image(),
            "filename_prefix": ("STRING", {"default": "ComfyUI", "multiline": False}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            **options,
        },
        "hidden": dict(_HIDDEN_METADATA),
    }


def _animated_ui(entry: dict[str, str], frames: int) -> dict[str, Any]:
    ui: dict[str, Any] = {"images": [entry]}
    if frames > 1:
        ui["animated"] = (True,)
    return ui


class SaveAnimatedWEBP(_Saver):
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _animation_inputs(
            lossless=("BOOLEAN", {"default": True}),
            quality=("INT", {"default": 80, "min": 0, "max": 100}),
            method=(list(_WEBP_METHODS),),
        )

    def save_images(
        self,
        images: Any,
        fps: float,
        filename_prefix: str,
        lossless: bool,
        quality: int,
        method: str,
        num_frames: int = 0,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict[str, Any]:
        def options(first: Any) -> dict[str, Any]:
            off = self._metadata_off()
            exif = image_formats.webp_exif(first, None if off else prompt, None if off else extra_pnginfo)
            return {"exif": exif, "lossless": lossless, "quality": quality, "method": _WEBP_METHODS.get(method, 4)}

        return self._save_animation(images, filename_prefix, "webp", fps, options)


class SaveAnimatedPNG(_Saver):
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _animation_inputs(compress_level=("INT", {"advanced": True, "default": 4, "min": 0, "max": 9}))

    def save_images(
        self,
        images: Any,
        fps: float,
        compress_level: int,
        filename_prefix: str = "ComfyUI",
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict[str, Any]:
        def options(_first: Any) -> dict[str, Any]:
            info = None if self._metadata_off() else image_formats.animated_png_info(prompt, extra_pnginfo)
            return {"pnginfo": info, "compress_level": compress_level}

        return self._save_animation(images, filename_prefix, "png", fps, options)


class SaveImageAdvanced(_Saver):
    FUNCTION = "save_images"
    # ``format`` is a dynamic combo: the chosen option's widgets come as "format.bit_depth" and
    # "format.input_color_space", which only a node that accepts all inputs receives.
    ACCEPT_ALL_INPUTS = True
    DESCRIPTION = "Saves the input images to the output folder as 8/16-bit PNG or 32-bit float EXR."
    SEARCH_ALIASES = ["save", "save image", "export image", "output image", "write image"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": _image(),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "multiline": False}),
                "format": ("COMFY_DYNAMICCOMBO_V3", {"options": copy.deepcopy(_SAVE_FORMATS)}),
            },
            "hidden": dict(_HIDDEN_METADATA),
        }

    def save_images(
        self,
        images: Any,
        filename_prefix: str,
        format: str,  # noqa: A002 - the reference's input name
        prompt: Any = None,
        extra_pnginfo: Any = None,
        **widgets: Any,
    ) -> dict[str, Any]:
        file_format, bit_depth, color_space = _format_choice(format, widgets)
        folder, filename, counter, subfolder = self._target(images, filename_prefix)
        off = self._metadata_off()
        results = []
        for batch_number, image in enumerate(images):
            if image.shape[-1] == 1:
                image = image.expand(-1, -1, 3)  # grey: write it as RGB
            data = image_formats.encode_image(image, file_format, bit_depth, color_space)
            if not off and file_format == "png":
                data = image_formats.add_png_text(data, prompt, extra_pnginfo)
            elif not off:
                data = image_formats.add_exr_attributes(data, prompt, extra_pnginfo, color_space)
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}.{file_format}"
            (folder / name).write_bytes(data)
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}, "result": (images,)}


def _format_choice(choice: Any, widgets: dict[str, Any]) -> tuple[str, str, str]:
    """(format, bit depth, colour space) from the ``format`` combo and its ``format.*`` widgets;
    a widget the prompt leaves out takes its default, a value not offered is refused."""
    option = next((o for o in _SAVE_FORMATS if o["key"] == choice), None)
    if option is None:
        raise ValueError(f"format: {choice!r} is not one of {[o['key'] for o in _SAVE_FORMATS]}")
    picked = []
    for name, (_, spec) in option["inputs"]["required"].items():
        value = widgets.get(f"format.{name}", spec["default"])
        if value not in spec["options"]:
            raise ValueError(f"format.{name}: {value!r} is not one of {spec['options']} for {choice}")
        picked.append(value)
    return choice, picked[0], picked[1]


def _svg_texts(svg: Any) -> list[str]:
    """The documents of an SVG value: its ``data`` list (byte streams, as the reference's SVG
    type holds them), or bytes / text / a list of them."""
    items = getattr(svg, "data", svg)
    if not isinstance(items, list | tuple):
        items = [items]
    texts = []
    for item in items:
        if hasattr(item, "read"):
            if hasattr(item, "seek"):
                item.seek(0)
            item = item.read()
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8")
        if not isinstance(item, str):
            raise ValueError(f"svg holds a {type(item).__name__}, not an SVG document")
        texts.append(item)
    return texts


_SVG_OPEN_TAG = re.compile(r"(<svg[^>]*>)")


def _with_svg_metadata(document: str, metadata: str) -> str:
    """``document`` with a ``<metadata>`` element (the JSON in CDATA) after its opening tag."""
    safe = metadata.replace("]]>", "]]]]><![CDATA[>")  # CDATA cannot contain its own terminator
    element = f"\n  <metadata>\n    <![CDATA[\n{safe}\n    ]]>\n  </metadata>\n"
    return _SVG_OPEN_TAG.sub(lambda match: match.group(1) + element, document, count=1)


class SaveSVGNode(_Saver):
    RETURN_TYPES = ("SVG",)
    RETURN_NAMES = ("svg",)
    FUNCTION = "save_svg"
    DESCRIPTION = "Saves SVG documents to the output folder, with the prompt and workflow inside."
    SEARCH_ALIASES = ["export vector", "save vector graphics"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "svg": ("SVG", {}),
                "filename_prefix": ("STRING", {"default": "svg/ComfyUI", "multiline": False}),
            },
            "hidden": dict(_HIDDEN_METADATA),
        }

    def save_svg(
        self, svg: Any, filename_prefix: str = "svg/ComfyUI", prompt: Any = None, extra_pnginfo: Any = None
    ) -> dict[str, Any]:
        from kernel.paths import type_root

        documents = _svg_texts(svg)
        folder, filename, counter, subfolder = save_path(
            type_root(self.kernel(), "output"), filename_prefix, 0, 0
        )
        folder.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {}
        if not self._metadata_off():
            if prompt is not None:
                metadata["prompt"] = prompt
            if isinstance(extra_pnginfo, dict):
                metadata.update(extra_pnginfo)
        text = json.dumps(metadata, indent=2) if metadata else None
        results = []
        for batch_number, document in enumerate(documents):
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.svg"
            content = _with_svg_metadata(document, text) if text else document
            (folder / name).write_bytes(content.encode("utf-8"))
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}, "result": (svg,)}


# --- other modules of the reference ---------------------------------------------------------------


class ImageCompare(KernelNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_image_compare"
    PUBLISH_SCHEMA_HIDDEN = True
    RETURN_TYPES = ()
    FUNCTION = "compare"
    OUTPUT_NODE = True
    EXPERIMENTAL = True
    CATEGORY = "image"
    DESCRIPTION = "Shows two images over each other with a slider between them."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"compare_view": ("IMAGECOMPARE", {"socketless": True})},
            "optional": {"image_a": _image(), "image_b": _image()},
            "hidden": dict(_HIDDEN_METADATA),
        }

    def compare(
        self,
        compare_view: Any = None,
        image_a: Any = None,
        image_b: Any = None,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict[str, Any]:
        ui: dict[str, Any] = {"a_images": [], "b_images": []}
        for key, images, prefix in (
            ("a_images", image_a, "comfy.compare.a"),
            ("b_images", image_b, "comfy.compare.b"),
        ):
            if images is not None and len(images) > 0:
                ui[key] = bind(PreviewImage, self.kernel())().save_images(images, prefix)["ui"]["images"]
        return {"ui": ui, "result": ()}


class Canny(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_canny"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "detect_edge"
    CATEGORY = "image/filters"
    SEARCH_ALIASES = ["edge detection", "outline", "contour detection", "line art"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        threshold = {"min": 0.01, "max": 0.99, "step": 0.01}
        return {
            "required": {
                "image": _image(),
                "low_threshold": ("FLOAT", {"default": 0.4, **threshold}),
                "high_threshold": ("FLOAT", {"default": 0.8, **threshold}),
            }
        }

    def detect_edge(self, image: Any, low_threshold: float, high_threshold: float) -> tuple[Any]:
        """kornia's Canny on the picture (an alpha channel is left out); the edges as grey RGB."""
        import torch
        from kornia.filters import canny

        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        pixels = image[..., :3].to(dtype=torch.float32).movedim(-1, 1)
        _, edges = canny(pixels, low_threshold, high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1).to(image.dtype),)


class ColorToRGBInt(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_color"
    RETURN_TYPES = ("INT", "COLOR")
    RETURN_NAMES = ("rgb_int", "hex")
    FUNCTION = "convert"
    CATEGORY = "utilities"
    DESCRIPTION = "A colour as one RGB integer (0xRRGGBB) and as its #RRGGBB text."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"color": ("COLOR", {"default": "#ffffff", "socketless": True})}}

    def convert(self, color: str) -> tuple[int, str]:
        if not isinstance(color, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
            raise ValueError(f"Color must be in format #RRGGBB, got {color!r}")
        return int(color[1:], 16), color


class CreateBoundingBoxes(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_bounding_boxes"
    RETURN_TYPES = ("IMAGE", "BOUNDING_BOX", "ARRAY")
    RETURN_NAMES = ("preview", "bboxes", "elements")
    FUNCTION = "create"
    CATEGORY = "utilities"
    EXPERIMENTAL = True
    DESCRIPTION = "Boxes drawn on a canvas: a preview, their pixel boxes and prompt elements (type, box, text, colours)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        side = {"default": 1024, "min": 64, "max": 16384, "step": 16}
        return {
            "required": {
                "width": ("INT", dict(side)),
                "height": ("INT", dict(side)),
                "editor_state": ("BOUNDING_BOXES", {"default": [], "socketless": False}),
            },
            "optional": {"background": _image()},
        }

    def create(
        self, width: int, height: int, editor_state: Any = None, background: Any = None
    ) -> dict[str, Any]:
        regions = bounding_boxes.regions_from_boxes(editor_state, width, height)
        preview = bounding_boxes.render_preview(regions, width, height, background)
        result = (
            preview,
            bounding_boxes.pixel_boxes(regions, width, height),
            bounding_boxes.prompt_elements(regions),
        )
        return {"ui": {"dims": [width, height]}, "result": result}


NODES: dict[str, tuple[type, str | None]] = {
    "GetImageSize": (GetImageSize, "Get Image Size"),
    "ImageAddNoise": (ImageAddNoise, "Add Noise to Image"),
    "ImageCropV2": (ImageCropV2, "Crop Image"),
    "ImageFlip": (ImageFlip, "Flip Image"),
    "ImageFromBatch": (ImageFromBatch, "Get Image from Batch"),
    "ImageMergeTileList": (ImageMergeTileList, "Merge List of Tiles to Image"),
    "ImageRotate": (ImageRotate, "Rotate Image"),
    "ImageScaleToMaxDimension": (ImageScaleToMaxDimension, "Scale Image to Max Dimension"),
    "ImageStitch": (ImageStitch, "Stitch Images"),
    "PrimitiveBoundingBox": (PrimitiveBoundingBox, "Bounding Box"),
    "RepeatImageBatch": (RepeatImageBatch, "Repeat Image Batch"),
    "ResizeAndPadImage": (ResizeAndPadImage, "Resize And Pad Image"),
    "SaveAnimatedPNG": (SaveAnimatedPNG, "Save Animated PNG"),
    "SaveAnimatedWEBP": (SaveAnimatedWEBP, "Save Animated WEBP"),
    "SaveImageAdvanced": (SaveImageAdvanced, "Save Image (Advanced)"),
    "SaveSVGNode": (SaveSVGNode, "Save SVG"),
    "SplitImageToTileList": (SplitImageToTileList, "Split Image into List of Tiles"),
    "ImageCompare": (ImageCompare, "Compare Images"),
    "Canny": (Canny, "Detect Edges (Canny)"),
    "ColorToRGBInt": (ColorToRGBInt, "Color Picker"),
    "CreateBoundingBoxes": (CreateBoundingBoxes, "Create Bounding Boxes"),
}
