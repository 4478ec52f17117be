"""Post-processing nodes: blend, blur, quantize, sharpen, colour transfer, scaling and batching helpers (group A).

The reference's ``comfy_extras.nodes_post_processing``. IMAGE is ``[B, H, W, C]`` in 0..1, MASK
``[B, H, W]``. Some of these are V3 schema nodes with dynamic inputs: the batch nodes take a
growing group (``images.image0``, ``images.image1``... arrive as one dict, see
:mod:`kernel.nodes.dynamic`), and the resize / colour-transfer nodes a dynamic combo whose
selected option's widgets arrive as dotted keyword arguments (``resize_type.width``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.resize import CROP_METHODS, IMAGE_METHODS, upscale

if TYPE_CHECKING:
    import torch

_MODULE = "comfy_extras.nodes_post_processing"


class _Node(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "image/filters"
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ("IMAGE",)
    FUNCTION = "execute"


def option_values(
    combo: str, spec: Mapping[str, Any], choice: str, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The widgets of option ``choice`` of dynamic combo ``combo`` (declared by ``spec``, the
    combo's options dict) from a node's keyword arguments (``combo.name``), by plain name.

    The prompt's validation does not see these widgets (only the combo), so their types and
    limits are checked here: a bad value is a clear node error.
    """
    option = next((o for o in spec.get("options") or () if o.get("key") == choice), None)
    if option is None:
        raise ValueError(f"{combo}: unknown option {choice!r}")
    values: dict[str, Any] = {}
    for name, (kind, limits) in (option.get("inputs", {}).get("required") or {}).items():
        key = f"{combo}.{name}"
        if key not in kwargs:
            raise ValueError(f"{combo}: the option {choice!r} needs its input {name!r}")
        values[name] = _checked(key, kwargs[key], kind, limits)
    return values


def _checked(key: str, value: Any, kind: str, limits: Mapping[str, Any]) -> Any:
    if kind in ("INT", "FLOAT"):
        try:
            number = int(value) if kind == "INT" else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
        if not limits.get("min", number) <= number <= limits.get("max", number):
            raise ValueError(f"{key}: {number} is outside [{limits.get('min')}, {limits.get('max')}]")
        return number
    if kind == "COMBO":
        if value not in limits.get("options", ()):
            raise ValueError(f"{key}: {value!r} is not one of {limits.get('options')}")
        return value
    if not hasattr(value, "shape"):
        raise ValueError(f"{key}: expected a {kind} input")
    return value


# --- blend ---------------------------------------------------------------------------------------


def alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the source to the destination's channel count: an extra source alpha is dropped, a
    missing one is added as opaque. (The reference's ``image_alpha_fix`` pads the destination
    instead in the second case, which then fails on the channel mismatch.)"""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, destination.shape[-1] - source.shape[-1]), value=1.0)
    return destination, source


def blend_layers(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """``b`` laid over ``a`` with a layer blend mode (before mixing by the blend factor)."""
    import torch

    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        # The W3C soft light: its darkening branch for b <= 0.5, the D(a) curve for lightening.
        curve = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (curve - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"unsupported blend mode {mode!r}")


BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


class ImageBlend(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image1": ("IMAGE",),
                "image2": ("IMAGE",),
                "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                "blend_mode": (list(BLEND_MODES),),
            }
        }

    def execute(self, image1: Any, image2: Any, blend_factor: float, blend_mode: str) -> tuple[Any]:
        import torch

        image1, image2 = alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            moved = image2.movedim(-1, 1)
            image2 = upscale(moved, image1.shape[2], image1.shape[1], "bicubic", "center").movedim(1, -1)
        blended = blend_layers(image1, image2, blend_mode)
        return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


# --- blur and sharpen ----------------------------------------------------------------------------


def gaussian_kernel(size: int, sigma: float, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """A normalised ``size`` x ``size`` Gaussian over [-1, 1]^2 (so ``sigma`` is relative to the
    kernel's half width, as in the reference)."""
    import torch

    axis = torch.linspace(-1, 1, size, device=device)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    weights = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(dtype or torch.float32)


def sharpen_kernel(gaussian: torch.Tensor, alpha: float) -> torch.Tensor:
    """An unsharp-mask kernel: the blur scaled by -10 alpha, its centre raised so it sums to 1."""
    kernel = gaussian * -(alpha * 10)
    centre = kernel.shape[0] // 2
    kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0
    return kernel


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """``image`` ([B, H, W, C]) convolved per channel with ``kernel``, edges reflected."""
    import torch

    channels = image.shape[-1]
    weights = kernel.to(image.dtype).repeat(channels, 1, 1).unsqueeze(1)
    planes = torch.nn.functional.pad(image.movedim(-1, 1), (radius, radius, radius, radius), "reflect")
    out = torch.nn.functional.conv2d(planes, weights, padding=radius, groups=channels)
    return out[:, :, radius:-radius, radius:-radius].movedim(1, -1)


class ImageBlur(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            }
        }

    def execute(self, image: Any, blur_radius: int, sigma: float) -> tuple[Any]:
        if blur_radius == 0:
            return (image,)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device, dtype=image.dtype)
        return (_filter(image, kernel, blur_radius),)


class ImageSharpen(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "sharpen_radius": ("INT", {"advanced": True, "default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"advanced": True, "default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
                "alpha": ("FLOAT", {"advanced": True, "default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
            }
        }

    def execute(self, image: Any, sharpen_radius: int, sigma: float, alpha: float) -> tuple[Any]:
        import torch

        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        kernel = sharpen_kernel(gaussian_kernel(size, sigma, device=image.device, dtype=image.dtype), alpha)
        return (torch.clamp(_filter(image, kernel, sharpen_radius), 0, 1),)


# --- quantize ------------------------------------------------------------------------------------

DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def bayer_matrix(order: int) -> Any:
    """The ordered-dither threshold matrix of side ``order`` (a power of two), centred on 0 and
    scaled to (-0.5, 0.5): each level tiles the previous one with offsets -1.5, +0.5, +1.5, -0.5."""
    import numpy as np

    matrix = np.zeros((1, 1), dtype=np.float64)
    for level in range(1, int(math.log2(order)) + 1):
        q = 4**level
        m = q * matrix
        matrix = np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q
    return matrix


def _bayer_dither(image: Any, palette: Any, order: int) -> Any:
    """``image`` (PIL RGB) offset by the tiled Bayer matrix scaled to the palette's spacing, then
    mapped to ``palette`` without further dithering."""
    import numpy as np
    from PIL import Image

    colours = len(palette.getpalette()) // 3
    spread = 2 * 256 / colours
    threshold = spread * bayer_matrix(order) + 0.5
    pixels = np.asarray(image).astype(np.float32)
    h, w = pixels.shape[:2]
    reps = (math.ceil(h / order), math.ceil(w / order))
    tiled = np.tile(threshold, reps)[:h, :w, None].astype(np.float32)
    shifted = np.clip(pixels + tiled, 0, 255).astype(np.uint8)
    return Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)


def quantize_image(image: torch.Tensor, colors: int, dither: str) -> torch.Tensor:
    """Each item of ``image`` reduced to a ``colors``-entry palette (PIL's median cut)."""
    import numpy as np
    import torch
    from PIL import Image

    if dither not in DITHERS:
        raise ValueError(f"unknown dither {dither!r}")
    out = torch.zeros_like(image)
    for index in range(image.shape[0]):
        rgb = (image[index, ..., :3] * 255).to(torch.uint8).cpu().numpy()
        picture = Image.fromarray(rgb, mode="RGB")
        # PIL applies a given palette only through another image's quantize (Pillow issue 5836).
        palette = picture.quantize(colors=colors)
        if dither == "none":
            reduced = picture.quantize(palette=palette, dither=Image.Dither.NONE)
        elif dither == "floyd-steinberg":
            reduced = picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            reduced = _bayer_dither(picture, palette, int(dither.split("-")[-1]))
        out[index] = torch.from_numpy(np.asarray(reduced.convert("RGB")).astype(np.float32) / 255)
    return out


class ImageQuantize(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "colors": ("INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
                "dither": (list(DITHERS),),
            }
        }

    def execute(self, image: Any, colors: int, dither: str) -> tuple[Any]:
        if image.shape[-1] != 3:
            raise ValueError(f"Quantize Image needs RGB images, got {image.shape[-1]} channels")
        return (quantize_image(image, colors, dither),)


# --- scaling -------------------------------------------------------------------------------------


class ImageScaleToTotalPixels(_Node):
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(IMAGE_METHODS),),
                "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
                "resolution_steps": ("INT", {"advanced": True, "default": 1, "min": 1, "max": 256}),
            }
        }

    def execute(
        self, image: Any, upscale_method: str, megapixels: float, resolution_steps: int = 1
    ) -> tuple[Any]:
        samples = image.movedim(-1, 1)
        h, w = samples.shape[2], samples.shape[3]
        scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
        width = round(w * scale / resolution_steps) * resolution_steps
        height = round(h * scale / resolution_steps) * resolution_steps
        return (upscale(samples, int(width), int(height), upscale_method, "disabled").movedim(1, -1),)


RESIZE_TYPES = [
    "scale dimensions",
    "scale by multiplier",
    "scale longer dimension",
    "scale shorter dimension",
    "scale width",
    "scale height",
    "scale total pixels",
    "match size",
    "scale to multiple",
]


def _planes(tensor: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] or MASK [B, H, W] as [B, C, H, W]."""
    return tensor.movedim(-1, 1) if tensor.ndim == 4 else tensor.unsqueeze(1)


def _unplanes(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.movedim(1, -1) if like.ndim == 4 else tensor.squeeze(1)


def resize_to(
    tensor: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"
) -> torch.Tensor:
    """An IMAGE or MASK resized to ``width`` x ``height``."""
    return _unplanes(upscale(_planes(tensor), width, height, method, crop), tensor)


def _scaled_side(side: int, other_new: int, other_old: int) -> int:
    return max(1, round(side * other_new / other_old))


def resize_image_or_mask(
    tensor: torch.Tensor, kind: str, method: str, options: Mapping[str, Any]
) -> torch.Tensor:
    """``tensor`` resized the way ``kind`` (one of :data:`RESIZE_TYPES`) says, with that option's
    widgets in ``options`` (their plain names)."""
    h, w = tensor.shape[1], tensor.shape[2]
    if kind == "scale dimensions":
        width, height = int(options["width"]), int(options["height"])
        if width == 0 and height == 0:
            return tensor
        if width == 0:
            width = _scaled_side(w, height, h)
        elif height == 0:
            height = _scaled_side(h, width, w)
        return resize_to(tensor, width, height, method, options["crop"])
    if kind == "scale by multiplier":
        multiplier = float(options["multiplier"])
        return resize_to(tensor, round(w * multiplier), round(h * multiplier), method)
    if kind in ("scale longer dimension", "scale shorter dimension"):
        key = "longer_size" if kind == "scale longer dimension" else "shorter_size"
        size = int(options[key])
        # The chosen side (the longer or shorter one) becomes ``size``; a square gets both.
        width_is_it = (w > h) if kind == "scale longer dimension" else (w < h)
        height_is_it = (h > w) if kind == "scale longer dimension" else (h < w)
        if height_is_it:
            return resize_to(tensor, round(w / h * size), size, method)
        if width_is_it:
            return resize_to(tensor, size, round(h / w * size), method)
        return resize_to(tensor, size, size, method)
    if kind == "scale width":
        width = int(options["width"])
        return tensor if width == 0 else resize_to(tensor, width, _scaled_side(h, width, w), method)
    if kind == "scale height":
        height = int(options["height"])
        return tensor if height == 0 else resize_to(tensor, _scaled_side(w, height, h), height, method)
    if kind == "scale total pixels":
        total = int(float(options["megapixels"]) * 1024 * 1024)
        scale = math.sqrt(total / (w * h))
        return resize_to(tensor, round(w * scale), round(h * scale), method)
    if kind == "match size":
        match = options["match"]
        if not hasattr(match, "shape") or match.ndim not in (3, 4):
            raise ValueError("match size needs an IMAGE or MASK to match")
        return resize_to(tensor, match.shape[2], match.shape[1], method, options["crop"])
    if kind == "scale to multiple":
        return _cover_multiple(tensor, int(options["multiple"]), method)
    raise ValueError(f"unsupported resize type {kind!r}")


def _cover_multiple(tensor: torch.Tensor, multiple: int, method: str) -> torch.Tensor:
    """Scaled (keeping the aspect ratio) just enough to cover the largest multiple-of-``multiple``
    size inside it, then centre-cropped to that size."""
    if multiple <= 1:
        return tensor
    h, w = tensor.shape[1], tensor.shape[2]
    target_w, target_h = (w // multiple) * multiple, (h // multiple) * multiple
    if target_w == 0 or target_h == 0 or (target_w == w and target_h == h):
        return tensor
    if target_w / w >= target_h / h:
        scaled_w, scaled_h = target_w, max(target_h, math.ceil(h * target_w / w))
    else:
        scaled_w, scaled_h = max(target_w, math.ceil(w * target_h / h)), target_h
    scaled = resize_to(tensor, scaled_w, scaled_h, method)
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return scaled[:, y0 : y0 + target_h, x0 : x0 + target_w]


def _resize_inputs() -> dict[str, Any]:
    """The ``resize_type`` dynamic combo: each option with the widgets it brings."""

    def size(name: str) -> dict[str, Any]:
        return {name: ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}]}

    crop = {"crop": ["COMBO", {"default": "center", "multiselect": False, "options": list(CROP_METHODS)}]}
    widgets: dict[str, dict[str, Any]] = {
        "scale dimensions": {**size("width"), **size("height"), **crop},
        "scale by multiplier": {
            "multiplier": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]
        },
        "scale longer dimension": size("longer_size"),
        "scale shorter dimension": size("shorter_size"),
        "scale width": size("width"),
        "scale height": size("height"),
        "scale total pixels": {
            "megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}]
        },
        "match size": {"match": ["IMAGE,MASK", {}], **crop},
        "scale to multiple": {
            "multiple": ["INT", {"default": 8, "min": 1, "max": MAX_RESOLUTION, "step": 1}]
        },
    }
    return {"options": [{"key": key, "inputs": {"required": widgets[key]}} for key in RESIZE_TYPES]}


class ResizeImageMaskNode(_Node):
    CATEGORY = "image/transform"
    RETURN_TYPES = ("COMFY_MATCHTYPE_V3",)
    RETURN_NAMES = ("resized",)
    # The output takes the type linked to the "input_type" template (an IMAGE or a MASK).
    OUTPUT_MATCHTYPES = ("input_type",)
    # ``resize_type`` is a dynamic combo: the chosen option's widgets come as "resize_type.width"
    # and so on, which only a node that accepts all inputs receives.
    ACCEPT_ALL_INPUTS = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "input": (
                    "COMFY_MATCHTYPE_V3",
                    {"template": {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}},
                ),
                "resize_type": ("COMFY_DYNAMICCOMBO_V3", _resize_inputs()),
                "scale_method": (list(IMAGE_METHODS), {"default": "area"}),
            }
        }

    def execute(self, input: Any, resize_type: str, scale_method: str, **widgets: Any) -> tuple[Any]:
        if not hasattr(input, "ndim") or input.ndim not in (3, 4):
            raise ValueError("Resize Image/Mask takes an IMAGE or a MASK")
        values = option_values("resize_type", _resize_inputs(), resize_type, widgets)
        return (resize_image_or_mask(input, resize_type, scale_method, values),)


# --- batching ------------------------------------------------------------------------------------


def _autogrow(prefix: str, kind: str) -> tuple[str, dict[str, Any]]:
    template = {"input": {"required": {prefix: [kind, {}]}}, "prefix": prefix, "min": 1, "max": 50}
    return ("COMFY_AUTOGROW_V3", {"template": template})


def _members(group: Any, what: str) -> list[Any]:
    values = [v for v in (group or {}).values() if v is not None] if isinstance(group, Mapping) else []
    if not values:
        raise ValueError(f"connect at least one {what}")
    return values


def batch_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Images of any sizes as one batch: a missing alpha channel is added as opaque and every
    image is resized (bilinear, centre crop) to the first one's size."""
    import torch

    channels = max(image.shape[-1] for image in images)
    padded = [
        torch.nn.functional.pad(image, (0, 1), mode="constant", value=1.0)
        if image.shape[-1] < channels
        else image
        for image in images
    ]
    first = padded[0].shape
    sized = [
        image
        if image.shape[1:] == first[1:]
        else upscale(image.movedim(-1, 1), first[2], first[1], "bilinear", "center").movedim(1, -1)
        for image in padded
    ]
    return torch.cat(sized, dim=0)


def batch_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Masks as one batch, each resized (bilinear, centre crop) to the first one's size."""
    import torch

    first = masks[0].shape
    sized = [
        mask if mask.shape[1:] == first[1:] else resize_to(mask, first[2], first[1], "bilinear", "center")
        for mask in masks
    ]
    return torch.cat(sized, dim=0)


def batch_latents(latents: list[dict[str, Any]]) -> dict[str, Any]:
    """Latents as one batch (resized to the first's size), with the batch indices of each kept,
    so every item keeps the noise it would have had on its own."""
    import torch

    from plugins.core_nodes.nodes.latent_ops import reshape_latent_to

    out = dict(latents[0])
    first = latents[0]["samples"]
    indices: list[int] = []
    tensors = []
    for latent in latents:
        samples = latent["samples"]
        tensors.append(reshape_latent_to(first.shape, samples, repeat_batch=False))
        indices.extend(latent.get("batch_index", range(samples.shape[0])))
    out["samples"] = torch.cat(tensors, dim=0)
    out["batch_index"] = indices
    return out


class BatchImagesNode(_Node):
    CATEGORY = "image/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": _autogrow("image", "IMAGE")}}

    def execute(self, images: Mapping[str, Any]) -> tuple[Any]:
        return (batch_images(_members(images, "image")),)


class BatchMasksNode(_Node):
    CATEGORY = "image/mask"
    RETURN_TYPES = ("MASK",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"masks": _autogrow("mask", "MASK")}}

    def execute(self, masks: Mapping[str, Any]) -> tuple[Any]:
        return (batch_masks(_members(masks, "mask")),)


class BatchLatentsNode(_Node):
    CATEGORY = "model/latent/batch"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"latents": _autogrow("latent", "LATENT")}}

    def execute(self, latents: Mapping[str, Any]) -> tuple[Any]:
        return (batch_latents(_members(latents, "latent")),)


# --- colour transfer -------------------------------------------------------------------------------

TRANSFER_METHODS = ["reinhard_lab", "mkl_lab", "histogram"]


def color_transfer(
    target: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    stats: str,
    target_index: int = 0,
    strength: float = 1.0,
) -> torch.Tensor:
    """``target``'s colours moved towards ``reference``'s (see :mod:`._color_transfer`)."""
    from plugins.core_nodes.nodes._color_transfer import transfer

    return transfer(target, reference, method, stats, target_index, strength)


def _source_stats() -> dict[str, Any]:
    index = {"target_index": ["INT", {"default": 0, "min": 0, "max": 10000}]}
    return {
        "options": [
            {"key": "per_frame", "inputs": {"required": {}}},
            {"key": "uniform", "inputs": {"required": {}}},
            {"key": "target_frame", "inputs": {"required": index}},
        ]
    }


class ColorTransfer(_Node):
    RETURN_NAMES = ("image",)
    # ``source_stats`` is a dynamic combo (its "target_frame" option brings "source_stats.target_index").
    ACCEPT_ALL_INPUTS = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image_target": ("IMAGE",),
                "image_ref": ("IMAGE",),
                "method": (list(TRANSFER_METHODS),),
                "source_stats": ("COMFY_DYNAMICCOMBO_V3", _source_stats()),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            }
        }

    def execute(
        self,
        image_target: Any,
        image_ref: Any,
        method: str,
        source_stats: str,
        strength: float = 1.0,
        **widgets: Any,
    ) -> tuple[Any]:
        if method not in TRANSFER_METHODS:
            raise ValueError(f"unknown colour transfer method {method!r}")
        options = option_values("source_stats", _source_stats(), source_stats, widgets)
        if strength == 0 or image_ref is None:
            return (image_target,)
        if image_target.shape[-1] != 3 or image_ref.shape[-1] != 3:
            raise ValueError("Transfer Color works on RGB images")
        index = int(options.get("target_index", 0))
        return (color_transfer(image_target, image_ref, method, source_stats, index, strength),)


NODES: dict[str, tuple[type, str | None]] = {
    "ImageBlend": (ImageBlend, "Blend Images"),
    "ImageBlur": (ImageBlur, "Blur Image"),
    "ImageQuantize": (ImageQuantize, "Quantize Image"),
    "ImageSharpen": (ImageSharpen, "Sharpen Image"),
    "ImageScaleToTotalPixels": (ImageScaleToTotalPixels, "Scale Image to Total Pixels"),
    "ResizeImageMaskNode": (ResizeImageMaskNode, "Resize Image/Mask"),
    "BatchImagesNode": (BatchImagesNode, "Batch Images"),
    "BatchMasksNode": (BatchMasksNode, "Batch Masks"),
    "BatchLatentsNode": (BatchLatentsNode, "Batch Latents"),
    "ColorTransfer": (ColorTransfer, "Transfer Color"),
}
