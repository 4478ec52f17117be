"""UpscaleModelLoader and ImageUpscaleWithModel: image super-resolution models read by spandrel.

The upscale runs in overlapping tiles (512 pixels, 32 overlapping, edges blended linearly) so a
large image never has to fit through the network at once; when a tile runs out of memory the tile
size is halved and the image is done again, down to 128 pixels, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    step = tile - overlap
    return math.ceil(height / step) * math.ceil(width / step)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis; the last tile is moved back so it ends at the border."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - overlap, tile - overlap))
    return sorted({min(s, size - tile) for s in starts})


def _feather(height: int, width: int, ramp: int, like: torch.Tensor) -> torch.Tensor:
    """A ``[1, 1, h, w]`` weight that rises linearly over ``ramp`` pixels at every edge."""
    import torch

    mask = torch.ones((1, 1, height, width), dtype=like.dtype, device=like.device)
    for t in range(min(ramp, height // 2, width // 2)):
        weight = (t + 1) / ramp
        mask[:, :, t, :] *= weight
        mask[:, :, height - 1 - t, :] *= weight
        mask[:, :, :, t] *= weight
        mask[:, :, :, width - 1 - t] *= weight
    return mask


def tiled_upscale(
    images: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    tile: int,
    overlap: int,
    progress: ProgressBar | None = None,
) -> torch.Tensor:
    """``function`` over overlapping ``tile`` x ``tile`` windows of ``[B, C, H, W]``, blended back."""
    import torch

    batch, _, height, width = images.shape
    out: torch.Tensor | None = None
    for b in range(batch):
        acc: torch.Tensor | None = None
        weight: torch.Tensor | None = None
        for y in _starts(height, tile, overlap):
            for x in _starts(width, tile, overlap):
                throw_if_interrupted()
                piece = images[b : b + 1, :, y : y + tile, x : x + tile]
                result = function(piece)
                if acc is None:
                    channels = result.shape[1]
                    acc = torch.zeros((1, channels, height * scale, width * scale), dtype=result.dtype)
                    weight = torch.zeros_like(acc)
                assert weight is not None
                h, w = result.shape[2], result.shape[3]
                mask = _feather(h, w, round(overlap * scale), result)
                ys, xs = y * scale, x * scale
                acc[:, :, ys : ys + h, xs : xs + w] += (result * mask).to(acc.device)
                weight[:, :, ys : ys + h, xs : xs + w] += mask.to(acc.device)
                if progress is not None:
                    progress.update(1)
        assert acc is not None and weight is not None
        frame = acc / weight
        out = frame if out is None else torch.cat([out, frame])
    assert out is not None
    return out


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
        from plugins.core_nodes.models.checkpoint import load_state_dict

        state_dict, _ = load_state_dict(self.path("upscale_models", model_name), throw_if_interrupted)
        return (load_upscale_model(state_dict),)


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

        device = next(iter(upscale_model.model.parameters()), torch.empty(0)).device
        pixels = image.movedim(-1, -3).to(device)
        tile = TILE
        while True:
            steps = pixels.shape[0] * tile_steps(pixels.shape[3], pixels.shape[2], tile, OVERLAP)
            try:
                # no_grad, not inference_mode: later nodes may change the image in place.
                with torch.no_grad():
                    out = tiled_upscale(
                        pixels, upscale_model, int(upscale_model.scale), tile, OVERLAP, ProgressBar(steps)
                    )
                break
            except torch.OutOfMemoryError:
                tile //= 2
                if tile < MIN_TILE:
                    raise
        return (torch.clamp(out.movedim(-3, -1), min=0.0, max=1.0),)


NODES: dict[str, tuple[type, str | None]] = {
    "UpscaleModelLoader": (UpscaleModelLoader, "Load Upscale Model"),
    "ImageUpscaleWithModel": (ImageUpscaleWithModel, "Upscale Image (using Model)"),
}
