"""Resizing ``[B, C, H, W]`` tensors the way the image and latent upscale nodes need it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Cut ``samples`` to the aspect ratio of ``width`` x ``height``, keeping the middle."""
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect = old_w / old_h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL's Lanczos filter on the image as 8-bit pixels, as the reference resizes: each value
    scaled to 0..255, clipped and truncated to an integer, resized, then read back as n / 255.
    Each channel goes through PIL as its own 8-bit plane (PIL filters the bands of an RGB image
    one by one alike), so any number of channels works."""
    import numpy as np
    import torch
    from PIL import Image

    pixels = np.clip(255.0 * samples.movedim(1, -1).float().cpu().numpy(), 0, 255).astype(np.uint8)
    out = []
    for item in pixels:
        channels = [
            np.asarray(Image.fromarray(np.ascontiguousarray(item[..., c])).resize((width, height), Image.Resampling.LANCZOS))
            for c in range(item.shape[-1])
        ]
        out.append(np.stack(channels, axis=-1))
    resized = torch.from_numpy(np.stack(out).astype(np.float32) / 255.0).movedim(-1, 1)
    return resized.to(samples.device, samples.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the vectors of ``a`` and ``b`` (last axis) at fraction
    ``t``: the direction moves along the great circle, the length linearly. Vectors pointing
    (almost) the same way give ``a``; (almost) opposite ones the straight blend."""
    import torch

    len_a = a.norm(dim=-1, keepdim=True)
    len_b = b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(len_a == 0, 0.0, a / len_a)
    unit_b = torch.where(len_b == 0, 0.0, b / len_b)
    cos = (unit_a * unit_b).sum(dim=-1, keepdim=True)
    angle = cos.acos()
    sin = angle.sin()
    direction = ((1.0 - t) * angle).sin() / sin * unit_a + (t * angle).sin() / sin * unit_b
    out = direction * ((1.0 - t) * len_a + t * len_b)
    out = torch.where(cos > 1 - 1e-5, a, out)
    return torch.where(cos < 1e-5 - 1, (1.0 - t) * a + t * b, out)


def _neighbours(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``new`` positions along an axis of ``old``: the lower and upper source index
    and the fraction between them, where bilinear resizing (half-pixel centres, clamped at the
    borders) samples; the positions come from torch's own bilinear resize of the indices."""
    import torch

    positions = torch.nn.functional.interpolate(
        torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1), size=(1, new), mode="bilinear"
    ).reshape(-1)
    lower = positions.floor()
    upper = (lower + 1).clamp(max=old - 1)
    return lower.long(), upper.long(), positions - lower


def _slerp_axis(samples: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """``samples`` ([N, C, H, W]) resized to ``size`` along ``dim`` (2 or 3): each new pixel is the
    slerp of its two source neighbours' channel vectors."""
    lower, upper, frac = _neighbours(samples.shape[dim], size)
    lower, upper, frac = (v.to(samples.device) for v in (lower, upper, frac))
    a = samples.index_select(dim, lower).movedim(1, -1)
    b = samples.index_select(dim, upper).movedim(1, -1)
    # The fraction varies along ``dim``, which is one axis earlier once channels moved last.
    shape = [1] * a.ndim
    shape[dim - 1] = size
    return _slerp(a, b, frac.reshape(shape)).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The reference's ``bislerp`` resize: along the width, then along the height, each new
    pixel's channel vector slerped between its two neighbours' (in float32)."""
    out = _slerp_axis(samples.float(), width, 3)
    return _slerp_axis(out, height, 2).to(samples.dtype)


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """``samples`` resized to ``height`` x ``width`` (``lanczos`` and ``bislerp`` as the
    reference computes them, the other methods by torch's ``interpolate``)."""
    import torch

    if crop == "center":
        samples = center_crop(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method, **kwargs)
