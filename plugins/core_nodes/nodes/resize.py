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
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for item in samples.movedim(1, -1).float().cpu().numpy():
        channels = [
            np.asarray(Image.fromarray(item[..., c]).resize((width, height), Image.Resampling.LANCZOS))
            for c in range(item.shape[-1])
        ]
        out.append(np.stack(channels, axis=-1))
    return torch.from_numpy(np.stack(out)).movedim(-1, 1).to(samples.dtype)


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """``samples`` resized to ``height`` x ``width``.

    ``bislerp`` (spherical interpolation) is approximated by bilinear resizing here.
    """
    import torch

    if crop == "center":
        samples = center_crop(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    mode = {"bislerp": "bilinear"}.get(method, method)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=mode, **kwargs)
