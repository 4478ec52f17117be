"""Compositing nodes: alpha (the reference's ``comfy_extras.nodes_compositing``) and pasting one
image or latent into another under a mask (``LatentCompositeMasked`` / ``ImageCompositeMasked`` of
``comfy_extras.nodes_mask``).

IMAGE tensors are ``[B, H, W, C]`` in 0..1; a MASK is ``[B, H, W]`` where 1 means *transparent*
(the reference's LoadImage convention: mask = 1 - alpha). The Porter-Duff operators work on
alpha (1 - mask) and alpha-premultiplied colour, then convert back.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode
from plugins.core_nodes.nodes.resize import upscale

if TYPE_CHECKING:
    import torch

_MODULE = "comfy_extras.nodes_compositing"
_CATEGORY = "image/compositing"


class PorterDuffMode(enum.Enum):
    """The operators, numbered as the reference numbers them (its combo lists them in this order)."""

    ADD = 0
    CLEAR = 1
    DARKEN = 2
    DST = 3
    DST_ATOP = 4
    DST_IN = 5
    DST_OUT = 6
    DST_OVER = 7
    LIGHTEN = 8
    MULTIPLY = 9
    OVERLAY = 10
    SCREEN = 11
    SRC = 12
    SRC_ATOP = 13
    SRC_IN = 14
    SRC_OUT = 15
    SRC_OVER = 16
    XOR = 17


def _operate(
    mode: PorterDuffMode, sc: torch.Tensor, sa: torch.Tensor, dc: torch.Tensor, da: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(premultiplied colour, alpha) of ``mode`` on premultiplied source ``sc``/``sa`` and
    destination ``dc``/``da`` (the classic Porter-Duff table plus the reference's blend modes)."""
    import torch

    union = sa + da - sa * da
    if mode is PorterDuffMode.ADD:
        return torch.clamp(sc + dc, 0, 1), torch.clamp(sa + da, 0, 1)
    if mode is PorterDuffMode.CLEAR:
        return torch.zeros_like(dc), torch.zeros_like(da)
    if mode is PorterDuffMode.DARKEN:
        return (1 - da) * sc + (1 - sa) * dc + torch.min(sc, dc), union
    if mode is PorterDuffMode.DST:
        return dc, da
    if mode is PorterDuffMode.DST_ATOP:
        return sa * dc + (1 - da) * sc, sa
    if mode is PorterDuffMode.DST_IN:
        return dc * sa, sa * da
    if mode is PorterDuffMode.DST_OUT:
        return (1 - sa) * dc, (1 - sa) * da
    if mode is PorterDuffMode.DST_OVER:
        return dc + (1 - da) * sc, da + (1 - da) * sa
    if mode is PorterDuffMode.LIGHTEN:
        return (1 - da) * sc + (1 - sa) * dc + torch.max(sc, dc), union
    if mode is PorterDuffMode.MULTIPLY:
        return sc * dc, sa * da
    if mode is PorterDuffMode.OVERLAY:
        colour = torch.where(2 * dc < da, 2 * sc * dc, sa * da - 2 * (da - sc) * (sa - dc))
        return colour, union
    if mode is PorterDuffMode.SCREEN:
        return sc + dc - sc * dc, union
    if mode is PorterDuffMode.SRC:
        return sc, sa
    if mode is PorterDuffMode.SRC_ATOP:
        return da * sc + (1 - sa) * dc, da
    if mode is PorterDuffMode.SRC_IN:
        return sc * da, sa * da
    if mode is PorterDuffMode.SRC_OUT:
        return (1 - da) * sc, (1 - da) * sa
    if mode is PorterDuffMode.SRC_OVER:
        return sc + (1 - sa) * dc, sa + (1 - sa) * da
    # XOR
    return (1 - da) * sc + (1 - sa) * dc, (1 - da) * sa + (1 - sa) * da


def porter_duff_composite(
    src_image: torch.Tensor,
    src_alpha: torch.Tensor,
    dst_image: torch.Tensor,
    dst_alpha: torch.Tensor,
    mode: PorterDuffMode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``[H, W, C]`` composite; the alphas are ``[H, W, 1]`` *masks* (1 = transparent), and
    so is the returned one. Colour is un-premultiplied where the result is not (nearly) clear."""
    import torch

    sa, da = 1 - src_alpha, 1 - dst_alpha
    colour, alpha = _operate(mode, src_image * sa, sa, dst_image * da, da)
    straight = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
    return torch.clamp(straight, 0, 1), 1 - alpha


def _resize_hwc(item: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H, W, C]`` resized bicubically with a centre crop (the reference's common_upscale)."""
    scaled = upscale(item.unsqueeze(0).permute(0, 3, 1, 2), width, height, "bicubic", "center")
    return scaled.permute(0, 2, 3, 1).squeeze(0)


def repeat_to_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """The first ``size`` items of ``tensor`` repeated as often as needed."""
    if tensor.shape[0] == size:
        return tensor
    if tensor.shape[0] > size:
        return tensor[:size]
    times = -(-size // tensor.shape[0])
    return tensor.repeat((times,) + (1,) * (tensor.dim() - 1))[:size]


class _Compositing(CoreNode):
    """Inputs are written as the reference's schema-based nodes publish them (``("IMAGE", {})``,
    ``"COMBO"`` with options), so /object_info matches the reference's entries exactly."""

    CATEGORY = _CATEGORY
    RELATIVE_PYTHON_MODULE = _MODULE


class PorterDuffImageComposite(_Compositing):
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "composite"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "source": ("IMAGE", {}),
                "source_alpha": ("MASK", {}),
                "destination": ("IMAGE", {}),
                "destination_alpha": ("MASK", {}),
                "mode": (
                    "COMBO",
                    {"default": "DST", "multiselect": False, "options": [m.name for m in PorterDuffMode]},
                ),
            }
        }

    def composite(
        self,
        source: torch.Tensor,
        source_alpha: torch.Tensor,
        destination: torch.Tensor,
        destination_alpha: torch.Tensor,
        mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if mode not in PorterDuffMode.__members__:
            raise ValueError(f"PorterDuffImageComposite: unknown mode {mode!r}")
        # The shortest of the four batches decides how many composites are made.
        count = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
        images, masks = [], []
        for i in range(count):
            src, dst = source[i], destination[i]
            if src.shape[2] != dst.shape[2]:
                raise ValueError(
                    "PorterDuffImageComposite: source and destination need the same number of channels, "
                    f"got {src.shape[2]} and {dst.shape[2]}"
                )
            src_a, dst_a = source_alpha[i].unsqueeze(2), destination_alpha[i].unsqueeze(2)
            # Everything is brought to the destination image's size, as the reference does.
            height, width = dst.shape[0], dst.shape[1]
            if dst_a.shape[:2] != dst.shape[:2]:
                dst_a = _resize_hwc(dst_a, height, width)
            if src.shape != dst.shape:
                src = _resize_hwc(src, height, width)
            if src_a.shape != dst_a.shape:
                src_a = _resize_hwc(src_a, dst_a.shape[0], dst_a.shape[1])
            image, mask = porter_duff_composite(src, src_a, dst, dst_a, PorterDuffMode[mode])
            images.append(image)
            masks.append(mask.squeeze(2))
        return torch.stack(images), torch.stack(masks)


class SplitImageWithAlpha(_Compositing):
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "split_image_with_alpha"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {})}}

    def split_image_with_alpha(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        rgb = image[..., :3]
        # An image without a fourth channel is opaque: its mask is all 0.
        alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
        return rgb, 1.0 - alpha


class JoinImageWithAlpha(_Compositing):
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "join_image_with_alpha"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {}), "alpha": ("MASK", {})}}

    def join_image_with_alpha(self, image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor]:
        import torch

        if alpha.dim() == 2:
            alpha = alpha.unsqueeze(0)
        size = max(len(image), len(alpha))
        image = repeat_to_batch(image, size)
        alpha = repeat_to_batch(alpha, size)
        # The mask is stretched (bilinear) to the image's size, then turned into alpha.
        resized = torch.nn.functional.interpolate(
            alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]).float(),
            size=(image.shape[1], image.shape[2]),
            mode="bilinear",
        ).squeeze(1)
        return (torch.cat((image[..., :3], (1.0 - resized).unsqueeze(-1)), dim=-1),)


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """``source`` pasted into ``destination`` (both ``[B, C, H, W]``, changed in place and returned)
    with its top-left corner at pixel ``(x, y)``; ``multiplier`` pixels make one element (8 for
    latents). ``mask`` (``[H, W]`` or ``[B, H, W]``, stretched bilinearly to the source) blends:
    1 takes the source, 0 keeps the destination. What falls outside the destination is cut off."""
    import torch

    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = mask.to(destination.device, dtype=source.dtype).reshape(
            -1, 1, mask.shape[-2], mask.shape[-1]
        )
        weight = torch.nn.functional.interpolate(weight, size=source.shape[-2:], mode="bilinear")
        weight = repeat_to_batch(weight, source.shape[0])
    left, top = x // multiplier, y // multiplier
    # A negative offset (packs may pass one) cuts the source's leading rows / columns.
    src_left, src_top = max(0, -left), max(0, -top)
    left, top = max(0, left), max(0, top)
    width = min(source.shape[-1] - src_left, destination.shape[-1] - left)
    height = min(source.shape[-2] - src_top, destination.shape[-2] - top)
    if width <= 0 or height <= 0:
        return destination
    rows, cols = slice(src_top, src_top + height), slice(src_left, src_left + width)
    m = weight[..., rows, cols]
    region = destination[..., top : top + height, left : left + width]
    destination[..., top : top + height, left : left + width] = m * source[..., rows, cols] + (1 - m) * region
    return destination


class _Paste(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"
    FUNCTION = "composite"

    @classmethod
    def _inputs(cls, kind: str, step: int) -> dict[str, Any]:
        position = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": step}
        return {
            "required": {
                "destination": (kind, {}),
                "source": (kind, {}),
                "x": ("INT", dict(position)),
                "y": ("INT", dict(position)),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK", {})},
        }


class LatentCompositeMasked(_Paste):
    RETURN_TYPES = ("LATENT",)
    CATEGORY = "model/latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        # x / y are image pixels, in steps of one latent element.
        return cls._inputs("LATENT", 8)

    def composite(
        self,
        destination: dict[str, Any],
        source: dict[str, Any],
        x: int,
        y: int,
        resize_source: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[dict[str, Any]]:
        samples = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
        return ({**destination, "samples": samples},)


class ImageCompositeMasked(_Paste):
    RETURN_TYPES = ("IMAGE",)
    CATEGORY = _CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return cls._inputs("IMAGE", 1)

    def composite(
        self,
        destination: torch.Tensor,
        source: torch.Tensor,
        x: int,
        y: int,
        resize_source: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        import torch

        # The source takes the destination's channel count: alpha dropped, or added opaque.
        if source.shape[-1] > destination.shape[-1]:
            source = source[..., : destination.shape[-1]]
        elif source.shape[-1] < destination.shape[-1]:
            source = torch.nn.functional.pad(source, (0, 1), value=1.0)
        pasted = composite(
            destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source
        )
        return (pasted.movedim(1, -1),)


NODES: dict[str, tuple[type, str | None]] = {
    "LatentCompositeMasked": (LatentCompositeMasked, "Latent Composite Masked"),
    "ImageCompositeMasked": (ImageCompositeMasked, "Image Composite Masked"),
    "PorterDuffImageComposite": (PorterDuffImageComposite, "Porter-Duff Image Composite"),
    "SplitImageWithAlpha": (SplitImageWithAlpha, "Split Image with Alpha"),
    "JoinImageWithAlpha": (JoinImageWithAlpha, "Join Image with Alpha"),
}
