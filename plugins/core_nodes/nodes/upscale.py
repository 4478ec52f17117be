"""UpscaleModelLoader and ImageUpscaleWithModel: image super-resolution models read by spandrel.

The loader reads the file as the reference does (a pickle holding one dict, such as SwinIR's
``{"params_ema": ...}``, is unwrapped; spandrel strips the other wrappers and prefixes). The
upscale runs in tiles with the reference's rules: tiles of 512 pixels start every 480 (32
overlapping) along each axis of an image larger than a tile, the last one shorter where the image
ends; each tile's output is weighted by a ramp rising linearly over the overlap (times the scale)
at its edges, per axis, and the overlaps averaged by those weights. When a tile runs out of memory
the tile size is halved and the image done again, down to 128 pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.progress import ProgressBar, throw_if_interrupted
from plugins.core_nodes.nodes.common import CoreNode
from plugins.core_nodes.nodes.loaders import _Loader

if TYPE_CHECKING:
    import torch

TILE = 512
OVERLAP = 32
MIN_TILE = 128
# The key only a SwinIR-family file saved from a DataParallel wrapper has; it carries "module.".
_DATA_PARALLEL_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"


class UpscaleModelError(ValueError):
    """The file is not a single-image upscale model spandrel can build."""


def _spandrel() -> Any:
    try:
        import spandrel
    except ImportError as exc:  # spandrel imports torchvision, which may not load beside CPU torch
        raise RuntimeError(
            f"upscale models need the spandrel package, which cannot be imported: {exc}"
        ) from exc
    return spandrel


def load_upscale_model(state_dict: dict[str, torch.Tensor]) -> Any:
    """A spandrel ``ImageModelDescriptor`` (eval mode) for a state dict in any layout spandrel knows."""
    spandrel = _spandrel()
    if _DATA_PARALLEL_KEY in state_dict:
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict).eval()
    except spandrel.UnsupportedModelError:
        raise UpscaleModelError(
            "Not an upscale model: no architecture spandrel knows matches the file's weights."
        ) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError("Upscale model must be a single-image model.")
    return descriptor


def tile_steps(width: int, height: int, tile: int, overlap: int) -> int:
    """How many tiles one image of ``width`` x ``height`` is cut into (the progress bar's total)."""
    rows = 1 if height <= tile else math.ceil((height - overlap) / (tile - overlap))
    cols = 1 if width <= tile else math.ceil((width - overlap) / (tile - overlap))
    return rows * cols


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every ``tile - overlap`` pixels while more than ``overlap``
    pixels are left (a single tile when the axis fits in one)."""
    if size <= tile:
        return [0]
    return list(range(0, size - overlap, tile - overlap))


def _ramp(mask: torch.Tensor, dim: int, feather: int) -> None:
    """Scale the first and last ``feather`` slices of ``mask`` along ``dim`` by 1/f ... f/f, in
    place; an axis no longer than the ramp is left flat."""
    if feather >= mask.shape[dim]:
        return
    for t in range(feather):
        weight = (t + 1) / feather
        mask.narrow(dim, t, 1).mul_(weight)
        mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(weight)


def tiled_upscale(
    images: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    scale: float,
    tile: int,
    overlap: int,
    progress: ProgressBar | None = None,
) -> torch.Tensor:
    """``function`` (a x``scale`` upscaler) over ``tile`` x ``tile`` windows of ``[B, C, H, W]``
    overlapping by ``overlap``, blended back (see the module docstring)."""
    import torch

    batch, _, height, width = images.shape
    out_h, out_w = round(height * scale), round(width * scale)
    feather = round(overlap * scale)
    frames: list[torch.Tensor] = []
    for b in range(batch):
        item = images[b : b + 1]
        if height <= tile and width <= tile:
            throw_if_interrupted()
            frames.append(function(item))
            if progress is not None:
                progress.update(1)
            continue
        acc: torch.Tensor | None = None
        weight: torch.Tensor | None = None
        for y in tile_starts(height, tile, overlap):
            for x in tile_starts(width, tile, overlap):
                throw_if_interrupted()
                result = function(item[:, :, y : y + tile, x : x + tile])
                if acc is None:
                    acc = torch.zeros((1, result.shape[1], out_h, out_w), dtype=result.dtype, device=result.device)
                    weight = torch.zeros((1, 1, out_h, out_w), dtype=result.dtype, device=result.device)
                assert weight is not None
                mask = torch.ones((1, 1, *result.shape[2:]), dtype=result.dtype, device=result.device)
                _ramp(mask, 2, feather)
                _ramp(mask, 3, feather)
                ys, xs = round(y * scale), round(x * scale)
                h, w = min(result.shape[2], out_h - ys), min(result.shape[3], out_w - xs)
                acc[:, :, ys : ys + h, xs : xs + w] += result[:, :, :h, :w] * mask[:, :, :h, :w]
                weight[:, :, ys : ys + h, xs : xs + w] += mask[:, :, :h, :w]
                if progress is not None:
                    progress.update(1)
        assert acc is not None and weight is not None
        frames.append(acc / weight)
    return torch.cat(frames)


def read_upscale_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as the reference reads them: a pickle's ``state_dict``, or the one dict
    a single-key pickle holds (SwinIR / HAT releases keep ``{"params_ema": ...}``)."""
    import torch

    from plugins.core_nodes.models.checkpoint import PICKLE_SUFFIXES, load_state_dict

    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        try:
            data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # an unreadable or unsafe pickle: the generic reader words the error
            data = None
        if isinstance(data, dict) and "state_dict" not in data and len(data) == 1:
            inner = next(iter(data.values()))
            if isinstance(inner, dict):
                return {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    state_dict, _ = load_state_dict(path, throw_if_interrupted)
    return state_dict


class UpscaleModelLoader(_Loader):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_upscale_model"
    CATEGORY = "model/loaders"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model_name": ("COMBO", {"multiselect": False, "options": cls.names("upscale_models")})
            }
        }

    def load_model(self, model_name: str) -> tuple[Any]:
        return (load_upscale_model(read_upscale_state_dict(self.path("upscale_models", model_name))),)


class ImageUpscaleWithModel(CoreNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_upscale_model"
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"upscale_model": ("UPSCALE_MODEL", {}), "image": ("IMAGE", {})}}

    def upscale(self, upscale_model: Any, image: torch.Tensor) -> tuple[torch.Tensor]:
        import torch

        from plugins.core_nodes.models import adapters

        tile = TILE
        # On the server's compute device for the run (the model manager makes room and moves it
        # back after), as the reference loads the model to its torch device.
        with adapters._using(adapters._manager(), [upscale_model.model]) as device:
            pixels = image.movedim(-1, -3).to(device)
            while True:
                steps = pixels.shape[0] * tile_steps(pixels.shape[3], pixels.shape[2], tile, OVERLAP)
                try:
                    # no_grad, not inference_mode: later nodes may change the image in place.
                    with torch.no_grad():
                        out = tiled_upscale(
                            pixels, lambda a: upscale_model(a.float()), upscale_model.scale, tile, OVERLAP, ProgressBar(steps)
                        )
                    break
                except torch.OutOfMemoryError:
                    tile //= 2
                    if tile < MIN_TILE:
                        raise
        return (torch.clamp(out.movedim(-3, -1), min=0.0, max=1.0).to(image.device),)


NODES: dict[str, tuple[type, str | None]] = {
    "UpscaleModelLoader": (UpscaleModelLoader, "Load Upscale Model"),
    "ImageUpscaleWithModel": (ImageUpscaleWithModel, "Upscale Image (using Model)"),
}
