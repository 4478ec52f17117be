"""LATENT nodes: empty latents, VAE encode/decode (plain, tiled, inpaint), batches, resizing, masks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.resize import CROP_METHODS, LATENT_METHODS, upscale

if TYPE_CHECKING:
    import torch

Latent = dict[str, Any]


def crop_to_multiple(pixels: torch.Tensor, ratio: int) -> torch.Tensor:
    """``[B, H, W, C]`` cut to multiples of ``ratio``, centred, so the VAE sees whole latent pixels."""
    h = (pixels.shape[1] // ratio) * ratio
    w = (pixels.shape[2] // ratio) * ratio
    if h == pixels.shape[1] and w == pixels.shape[2]:
        return pixels
    y0 = (pixels.shape[1] % ratio) // 2
    x0 = (pixels.shape[2] % ratio) // 2
    return pixels[:, y0 : y0 + h, x0 : x0 + w, :]


def mask_to_pixels(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK as ``[B, 1, height, width]`` (bilinear)."""
    import torch

    mask = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    return torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixels under the (rounded) mask set to mid grey: what an inpainting VAE encode expects."""
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
    return (pixels.clone() - 0.5) * keep + 0.5


def _tiling_inputs(tile_step: int) -> dict[str, Any]:
    """The tile and (video-only) temporal widgets the tiled VAE nodes share; only the tile step differs.

    All four are ``advanced`` (folded away by the frontend), as the reference publishes them."""
    return {
        "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": tile_step, "advanced": True}),
        "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32, "advanced": True}),
        "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4, "advanced": True}),
        "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4, "advanced": True}),
    }


def _match_batch(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A mask with fewer items than the batch, repeated and cut to ``size`` items."""
    if mask.shape[0] < size:
        repeats = math.ceil(size / mask.shape[0])
        mask = mask.repeat(repeats, *([1] * (mask.ndim - 1)))[:size]
    return mask


class _Latent(CoreNode):
    CATEGORY = "model/latent"
    RETURN_TYPES = ("LATENT",)


class EmptyLatentImage(_Latent):
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class VAEDecode(CoreNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "model/latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    def decode(self, vae: Any, samples: Latent) -> tuple[Any]:
        return (vae.decode(samples["samples"]),)


class VAEDecodeTiled(CoreNode):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "model/latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "vae": ("VAE",),
                **_tiling_inputs(tile_step=32),
            }
        }

    def decode(
        self, vae: Any, samples: Latent, tile_size: int, overlap: int = 64,
        temporal_size: int = 64, temporal_overlap: int = 8,
    ) -> tuple[Any]:  # fmt: skip
        # The temporal inputs only matter to video VAEs, which this stack does not have.
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        d = int(getattr(vae, "downscale_ratio", 8))
        tile = tile_size // d
        return (vae.decode_tiled(samples["samples"], tile_x=tile, tile_y=tile, overlap=overlap // d),)


class VAEEncode(_Latent):
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    def encode(self, vae: Any, pixels: Any) -> tuple[Latent]:
        pixels = crop_to_multiple(pixels, int(getattr(vae, "downscale_ratio", 8)))
        return ({"samples": vae.encode(pixels[..., :3])},)

    @staticmethod
    def vae_encode_crop_pixels(pixels: Any) -> Any:
        """The reference's name for the centred crop to multiples of 8 (packs call it on the class)."""
        return crop_to_multiple(pixels, 8)


class VAEEncodeTiled(_Latent):
    FUNCTION = "encode"
    CATEGORY = "model/latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pixels": ("IMAGE",),
                "vae": ("VAE",),
                **_tiling_inputs(tile_step=64),
            }
        }

    def encode(
        self, vae: Any, pixels: Any, tile_size: int, overlap: int = 64,
        temporal_size: int = 64, temporal_overlap: int = 8,
    ) -> tuple[Latent]:  # fmt: skip
        pixels = crop_to_multiple(pixels, int(getattr(vae, "downscale_ratio", 8)))
        tiled = vae.encode_tiled(pixels[..., :3], tile_x=tile_size, tile_y=tile_size, overlap=overlap)
        return ({"samples": tiled},)


class VAEEncodeForInpaint(_Latent):
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pixels": ("IMAGE",),
                "vae": ("VAE",),
                "mask": ("MASK",),
                "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1}),
            }
        }

    def encode(self, vae: Any, pixels: Any, mask: Any, grow_mask_by: int = 6) -> tuple[Latent]:
        import torch

        ratio = int(getattr(vae, "downscale_ratio", 8))
        mask = mask_to_pixels(mask, pixels.shape[1], pixels.shape[2])
        pixels = crop_to_multiple(pixels, ratio)
        mask = crop_to_multiple(mask.movedim(1, -1), ratio).movedim(-1, 1)
        if grow_mask_by == 0:
            grown = mask
        else:
            # Dilate the mask a little so the repainted region blends into its surroundings.
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            padding = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel, padding=padding), 0, 1)
        latent = vae.encode(grey_out(pixels[..., :3], mask))
        grown = grown[:, :, : pixels.shape[1], : pixels.shape[2]].round()
        return ({"samples": latent, "noise_mask": grown},)


class SetLatentNoiseMask(_Latent):
    FUNCTION = "set_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    def set_mask(self, samples: Latent, mask: Any) -> tuple[Latent]:
        out = dict(samples)
        out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (out,)


class LatentUpscale(_Latent):
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (list(LATENT_METHODS),),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "crop": (list(CROP_METHODS),),
            }
        }

    def upscale(
        self, samples: Latent, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Latent]:
        out = dict(samples)
        s = samples["samples"]
        if width == 0 and height == 0:
            return (out,)
        # A zero side follows the other one, keeping the aspect ratio.
        if width == 0:
            height = max(64, height)
            width = max(64, round(s.shape[-1] * height / s.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(s.shape[-2] * width / s.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        out["samples"] = upscale(s, width // 8, height // 8, upscale_method, crop)
        return (out,)


class LatentUpscaleBy(_Latent):
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (list(LATENT_METHODS),),
                "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    def upscale(self, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        s = samples["samples"]
        width = round(s.shape[-1] * scale_by)
        height = round(s.shape[-2] * scale_by)
        out = dict(samples)
        out["samples"] = upscale(s, width, height, upscale_method, "disabled")
        return (out,)


class LatentComposite(_Latent):
    FUNCTION = "composite"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        pos = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "samples_to": ("LATENT",),
                "samples_from": ("LATENT",),
                "x": ("INT", dict(pos)),
                "y": ("INT", dict(pos)),
                "feather": ("INT", dict(pos)),
            }
        }

    def composite(
        self, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int = 0
    ) -> tuple[Latent]:
        import torch

        x, y, feather = x // 8, y // 8, feather // 8
        target = samples_to["samples"].clone()
        source = samples_from["samples"]
        h = max(0, min(source.shape[2], target.shape[2] - y))
        w = max(0, min(source.shape[3], target.shape[3] - x))
        out = dict(samples_to)
        if h == 0 or w == 0:
            out["samples"] = target
            return (out,)
        piece = source[:, :, :h, :w]
        weight = torch.ones_like(piece)
        for t in range(feather):
            ramp = (t + 1) / feather
            # Fade only the edges that lie inside the target, so pasted borders blend.
            if y != 0:
                weight[:, :, t : t + 1, :] *= ramp
            if y + source.shape[2] < target.shape[2]:
                weight[:, :, h - 1 - t : h - t, :] *= ramp
            if x != 0:
                weight[:, :, :, t : t + 1] *= ramp
            if x + source.shape[3] < target.shape[3]:
                weight[:, :, :, w - 1 - t : w - t] *= ramp
        region = target[:, :, y : y + h, x : x + w]
        target[:, :, y : y + h, x : x + w] = piece * weight + region * (1 - weight)
        out["samples"] = target
        return (out,)


class LatentBlend(_Latent):
    FUNCTION = "blend"
    CATEGORY = "experimental"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples1": ("LATENT",),
                "samples2": ("LATENT",),
                "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}),
            }
        }

    def blend(self, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        a = samples1["samples"]
        b = samples2["samples"]
        if a.shape != b.shape:
            b = upscale(b, a.shape[3], a.shape[2], "bicubic", "center")
        out = dict(samples1)
        out["samples"] = a * blend_factor + b * (1 - blend_factor)
        return (out,)


class LatentFromBatch(_Latent):
    FUNCTION = "frombatch"
    CATEGORY = "model/latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "batch_index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION}),
                "length": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    def frombatch(self, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        s = samples["samples"]
        if batch_index < 0:  # counted from the end of the batch, as in the reference
            batch_index += s.shape[0]
        start = max(0, min(s.shape[0] - 1, batch_index))
        length = min(s.shape[0] - start, length)
        out = dict(samples)
        out["samples"] = s[start : start + length].clone()
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            mask = _match_batch(mask, s.shape[0])
            out["noise_mask"] = mask[start : start + length].clone()
        # batch_index keeps each item's noise: it is drawn as if the whole batch were sampled.
        indices = samples.get("batch_index") or list(range(s.shape[0]))
        out["batch_index"] = list(indices[start : start + length])
        return (out,)


class RepeatLatentBatch(_Latent):
    FUNCTION = "repeat"
    CATEGORY = "model/latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def repeat(self, samples: Latent, amount: int) -> tuple[Latent]:
        s = samples["samples"]
        out = dict(samples)
        out["samples"] = s.repeat((amount, 1, 1, 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            mask = _match_batch(mask, s.shape[0])
            out["noise_mask"] = mask.repeat(amount, *([1] * (mask.ndim - 1)))
        if "batch_index" in samples:
            indices = list(samples["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + offset * k for k in range(1, amount) for i in indices]
        return (out,)


class _LatentTransform(_Latent):
    CATEGORY = "model/latent/transform"


class LatentCrop(_LatentTransform):
    """A window of the latent, given in pixels (multiples of 8 become latent pixels)."""

    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"min": 64, "max": MAX_RESOLUTION, "step": 8}
        offset = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "samples": ("LATENT",),
                "width": ("INT", {"default": 512, **size}),
                "height": ("INT", {"default": 512, **size}),
                "x": ("INT", dict(offset)),
                "y": ("INT", dict(offset)),
            }
        }

    def crop(self, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        s = samples["samples"]
        # As the reference: the start is kept at least 8 latent pixels (64 pixels) from the far
        # edges, the size is not clipped further, and the noise mask passes through uncropped.
        x0 = min(x // 8, s.shape[-1] - 8)
        y0 = min(y // 8, s.shape[-2] - 8)
        out = dict(samples)
        out["samples"] = s[..., y0 : y0 + height // 8, x0 : x0 + width // 8]
        return (out,)


class LatentFlip(_LatentTransform):
    FUNCTION = "flip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    def flip(self, samples: Latent, flip_method: str) -> tuple[Latent]:
        import torch

        # "x-axis" mirrors across the horizontal axis (rows reversed), "y-axis" across the vertical one.
        dim = -2 if flip_method.startswith("x") else -1
        out = dict(samples)
        out["samples"] = torch.flip(samples["samples"], dims=[dim])
        return (out,)


class LatentRotate(_LatentTransform):
    FUNCTION = "rotate"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],),
            }
        }

    def rotate(self, samples: Latent, rotation: str) -> tuple[Latent]:
        import torch

        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        out = dict(samples)
        # Clockwise, as the reference turns images: from the width axis towards the height axis.
        out["samples"] = torch.rot90(samples["samples"], k=turns, dims=[-1, -2])
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "EmptyLatentImage": (EmptyLatentImage, "Empty Latent Image"),
    "VAEDecode": (VAEDecode, "VAE Decode"),
    "VAEEncode": (VAEEncode, "VAE Encode"),
    "VAEEncodeForInpaint": (VAEEncodeForInpaint, "VAE Encode (for Inpainting)"),
    "VAEDecodeTiled": (VAEDecodeTiled, "VAE Decode (Tiled)"),
    "VAEEncodeTiled": (VAEEncodeTiled, "VAE Encode (Tiled)"),
    "SetLatentNoiseMask": (SetLatentNoiseMask, "Set Latent Noise Mask"),
    "LatentUpscale": (LatentUpscale, "Upscale Latent"),
    "LatentUpscaleBy": (LatentUpscaleBy, "Upscale Latent By"),
    "LatentComposite": (LatentComposite, "Latent Composite"),
    "LatentBlend": (LatentBlend, "Latent Blend"),
    "LatentFromBatch": (LatentFromBatch, "Get Latent From Batch"),
    "RepeatLatentBatch": (RepeatLatentBatch, "Repeat Latent Batch"),
    "LatentCrop": (LatentCrop, "Crop Latent"),
    "LatentFlip": (LatentFlip, "Flip Latent"),
    "LatentRotate": (LatentRotate, "Rotate Latent"),
}
