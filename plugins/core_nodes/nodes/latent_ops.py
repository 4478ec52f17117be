"""Latent maths and batching: add/subtract/multiply/interpolate, batch/concat/cut, latent operations, rebatching (group A).

The reference's ``comfy_extras.nodes_latent`` and ``nodes_rebatch``. A LATENT_OPERATION is a
plain callable ``operation(latent=tensor, **kwargs) -> tensor`` (what packs pass around too),
applied to a whole latent by :class:`LatentApplyOperation` or to the guidance delta during
sampling by :class:`LatentApplyOperationCFG`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from plugins.core_nodes.nodes.common import MAX_RESOLUTION, CoreNode

if TYPE_CHECKING:
    import torch

log = logging.getLogger("comfykernel.core_nodes")

Latent = dict[str, Any]
LatentOperation = Callable[..., Any]

_MODULE = "comfy_extras.nodes_latent"


# --- shared helpers ------------------------------------------------------------------------------


def resize_spatial(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear, centre-cropped resize of the last two dims, for 4-D and 5-D (video) latents."""
    from plugins.core_nodes.nodes.resize import upscale

    if samples.ndim == 5:
        b, c, t = samples.shape[:3]
        flat = samples.movedim(2, 1).reshape(b * t, c, *samples.shape[-2:])
        out = upscale(flat, width, height, "bilinear", "center")
        return out.reshape(b, t, c, height, width).movedim(1, 2)
    return upscale(samples, width, height, "bilinear", "center")


def reshape_latent_to(target_shape: Any, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """``latent`` brought to ``target_shape``: resized when the item shape differs, then (unless
    ``repeat_batch`` is off) tiled or cut to the target batch. Two latents of different sizes
    can so be added, as in the reference."""
    if tuple(latent.shape[1:]) != tuple(target_shape[1:]):
        latent = resize_spatial(latent, int(target_shape[-1]), int(target_shape[-2]))
    from plugins.core_nodes.conds import repeat_to_batch_size

    return repeat_to_batch_size(latent, int(target_shape[0])) if repeat_batch else latent


def _with_samples(latent: Latent, samples: torch.Tensor) -> Latent:
    out = dict(latent)
    out["samples"] = samples
    return out


class _Node(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    # These schema nodes name no display name in the reference: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True
    CATEGORY = "model/latent/advanced"
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ("LATENT",)
    FUNCTION = "execute"


def _two_latents() -> dict[str, Any]:
    return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",)}}


# --- arithmetic ----------------------------------------------------------------------------------


class LatentAdd(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _two_latents()

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        s1 = samples1["samples"]
        return (_with_samples(samples1, s1 + reshape_latent_to(s1.shape, samples2["samples"])),)


class LatentSubtract(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _two_latents()

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        s1 = samples1["samples"]
        return (_with_samples(samples1, s1 - reshape_latent_to(s1.shape, samples2["samples"])),)


class LatentMultiply(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        multiplier = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
        return {"required": {"samples": ("LATENT",), "multiplier": ("FLOAT", multiplier)}}

    def execute(self, samples: Latent, multiplier: float) -> tuple[Latent]:
        return (_with_samples(samples, samples["samples"] * multiplier),)


class LatentInterpolate(_Node):
    """Blends directions and magnitudes separately: the per-pixel channel vectors are normalised,
    mixed, renormalised and given the mixed length, so a 50/50 blend does not lose energy."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        ratio = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",), "ratio": ("FLOAT", ratio)}}

    def execute(self, samples1: Latent, samples2: Latent, ratio: float) -> tuple[Latent]:
        import torch

        s1 = samples1["samples"]
        s2 = reshape_latent_to(s1.shape, samples2["samples"])
        if s1.shape[0] not in (1, s1.shape[1]):
            # The reference divides [B, C, H, W] by the [B, H, W] norms as they are, which
            # broadcasts only for a batch of one (or as many items as channels).
            raise ValueError(f"Latent Interpolate takes a batch of 1 (got {s1.shape[0]})")
        m1 = torch.linalg.vector_norm(s1, dim=1)
        m2 = torch.linalg.vector_norm(s2, dim=1)
        d1 = torch.nan_to_num(s1 / m1)
        d2 = torch.nan_to_num(s2 / m2)
        mixed = d1 * ratio + d2 * (1.0 - ratio)
        direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1))
        return (_with_samples(samples1, direction * (m1 * ratio + m2 * (1.0 - ratio))),)


# --- shape: concat, cut, batch -------------------------------------------------------------------


def _axis(samples: torch.Tensor, dim: str) -> int:
    """The tensor axis of ``x`` (width), ``y`` (height) or ``t`` (frames), a leading minus ignored."""
    for letter, back in (("x", 1), ("y", 2), ("t", 3)):
        if letter in dim:
            return samples.ndim - back
    raise ValueError(f"unknown dimension {dim!r}: expected x, y or t")


class LatentConcat(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {**_two_latents()["required"], "dim": (["x", "-x", "y", "-y", "t", "-t"],)}}

    def execute(self, samples1: Latent, samples2: Latent, dim: str) -> tuple[Latent]:
        import torch

        from plugins.core_nodes.conds import repeat_to_batch_size

        s1 = samples1["samples"]
        s2 = repeat_to_batch_size(samples2["samples"], s1.shape[0])
        axis = _axis(s1, dim)
        if s1.ndim != s2.ndim or axis < 1:
            raise ValueError(
                f"cannot join latents of shapes {tuple(s1.shape)} and {tuple(s2.shape)} along {dim}"
            )
        pair = (s2, s1) if dim.startswith("-") else (s1, s2)
        try:
            joined = torch.cat(pair, dim=axis)
        except RuntimeError as exc:
            raise ValueError(
                f"cannot join latents of shapes {tuple(s1.shape)} and {tuple(s2.shape)} along {dim}: "
                "every other dimension must match"
            ) from exc
        return (_with_samples(samples1, joined),)


class LatentCut(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "dim": (["x", "y", "t"],),
                "index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
                "amount": ("INT", {"default": 1, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def execute(self, samples: Latent, dim: str, index: int, amount: int) -> tuple[Latent]:
        s = samples["samples"]
        axis = _axis(s, dim)
        size = s.shape[axis]
        # Out-of-range starts are clamped to the nearest element; negative ones count from the end.
        if index >= 0:
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:
            index = max(index, -size)
            amount = min(-index, amount)
        return (_with_samples(samples, s.narrow(axis, index, amount)),)


class LatentCutToBatch(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "dim": (["t", "x", "y"],),
                "slice_size": ("INT", {"default": 1, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def execute(self, samples: Latent, dim: str, slice_size: int) -> tuple[Latent]:
        s = samples["samples"]
        axis = _axis(s, dim)
        if axis < 2:  # a 4-D latent has no frame axis: nothing to cut
            return (samples,)
        moved = s.movedim(axis, 1)
        length = moved.shape[1]
        if length < slice_size:
            slice_size = length
        elif length % slice_size:
            moved = moved[:, : (length // slice_size) * slice_size]  # a short last slice is dropped
        pieces = moved.reshape(-1, slice_size, *moved.shape[2:])
        return (_with_samples(samples, pieces.movedim(1, axis)),)


class LatentBatch(_Node):
    CATEGORY = "model/latent/batch"
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _two_latents()

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        import torch

        s1 = samples1["samples"]
        s2 = reshape_latent_to(s1.shape, samples2["samples"], repeat_batch=False)
        out = _with_samples(samples1, torch.cat((s1, s2), dim=0))
        out["batch_index"] = list(samples1.get("batch_index", range(s1.shape[0]))) + list(
            samples2.get("batch_index", range(s2.shape[0]))
        )
        return (out,)


class LatentBatchSeedBehavior(_Node):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "samples": ("LATENT",),
                "seed_behavior": (["random", "fixed"], {"default": "fixed"}),
            }
        }

    def execute(self, samples: Latent, seed_behavior: str) -> tuple[Latent]:
        out = dict(samples)
        if seed_behavior == "random":
            # Without batch indices every item gets its own slice of the seed's noise.
            out.pop("batch_index", None)
        elif seed_behavior == "fixed":
            # Every item gets the noise of the first one.
            first = list(out.get("batch_index", [0]))[0]
            out["batch_index"] = [first] * samples["samples"].shape[0]
        return (out,)


class ReplaceVideoLatentFrames(_Node):
    CATEGORY = "model/latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "destination": ("LATENT",),
                "index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
            },
            "optional": {"source": ("LATENT",)},
        }

    def execute(self, destination: Latent, index: int, source: Latent | None = None) -> tuple[Latent]:
        if source is None:
            return (destination,)
        dest = destination["samples"]
        src = source["samples"]
        if dest.ndim != src.ndim or dest.ndim < 3:
            raise ValueError("Replace Video Latent Frames needs two latents of the same kind")
        frames, count = dest.shape[2], src.shape[2]
        if index < 0:
            index += frames
        # As in the reference, a source that does not fit leaves the destination as it is.
        if index > frames or index < 0:
            log.warning(
                "ReplaceVideoLatentFrames: index %d is outside the %d destination frames", index, frames
            )
            return (destination,)
        if index + count > frames:
            log.warning(
                "ReplaceVideoLatentFrames: %d source frames do not fit in %d frames at index %d",
                count,
                frames,
                index,
            )
            return (destination,)
        replaced = dest.clone()
        replaced[:, :, index : index + count] = src
        # The reference keeps the source's other keys (its noise mask, batch index).
        return (_with_samples(source, replaced),)


# --- latent operations -----------------------------------------------------------------------------


class _Operation(_Node):
    CATEGORY = "model/latent/advanced/operations"
    EXPERIMENTAL = True


class LatentApplyOperation(_Operation):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "operation": ("LATENT_OPERATION",)}}

    def execute(self, samples: Latent, operation: LatentOperation) -> tuple[Latent]:
        return (_with_samples(samples, operation(latent=samples["samples"])),)


def pre_cfg_operation(operation: LatentOperation) -> Callable[[dict[str, Any]], list[Any]]:
    """A pre-CFG function applying ``operation`` to the guidance direction (cond minus uncond)
    and adding the uncond back, or to the only prediction when there is no uncond."""

    def apply(args: dict[str, Any]) -> list[Any]:
        conds_out = list(args["conds_out"])
        if len(conds_out) == 2:
            conds_out[0] = operation(latent=conds_out[0] - conds_out[1]) + conds_out[1]
        else:
            conds_out[0] = operation(latent=conds_out[0])
        return conds_out

    return apply


class LatentApplyOperationCFG(_Operation):
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "operation": ("LATENT_OPERATION",)}}

    def execute(self, model: Any, operation: LatentOperation) -> tuple[Any]:
        patched = model.clone()
        patched.set_model_sampler_pre_cfg_function(pre_cfg_operation(operation))
        return (patched,)


def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tone mapping of the per-pixel channel-vector lengths: lengths are scaled so that
    mean + 5 std (times ``multiplier``) is the knee, compressed with l / (l + 1), scaled back."""
    import torch

    length = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]
    direction = latent / length
    dims = list(range(1, length.ndim))
    top = (
        torch.std(length, dim=dims, keepdim=True) * 5 + torch.mean(length, dim=dims, keepdim=True)
    ) * multiplier
    scaled = length / top
    return direction * (scaled / (scaled + 1.0)) * top


class LatentOperationTonemapReinhard(_Operation):
    RETURN_TYPES = ("LATENT_OPERATION",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})}
        }

    def execute(self, multiplier: float) -> tuple[LatentOperation]:
        def operation(latent: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return tonemap_reinhard(latent, multiplier)

        return (operation,)


def sharpen_latent(latent: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp masking of the normalised latent (per-pixel unit channel vectors), lengths restored."""
    import torch

    from plugins.core_nodes.nodes.post_processing import gaussian_kernel, sharpen_kernel

    length = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
    normalised = latent / length
    channels = latent.shape[1]
    kernel = sharpen_kernel(gaussian_kernel(radius * 2 + 1, sigma, device=latent.device), alpha)
    weights = kernel.to(latent.dtype).repeat(channels, 1, 1).unsqueeze(1)
    padded = torch.nn.functional.pad(normalised, (radius, radius, radius, radius), "reflect")
    sharpened = torch.nn.functional.conv2d(padded, weights, padding=radius, groups=channels)
    return length * sharpened[:, :, radius:-radius, radius:-radius]


class LatentOperationSharpen(_Operation):
    RETURN_TYPES = ("LATENT_OPERATION",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "sharpen_radius": ("INT", {"advanced": True, "default": 9, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"advanced": True, "default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
                "alpha": ("FLOAT", {"advanced": True, "default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01}),
            }
        }

    def execute(self, sharpen_radius: int, sigma: float, alpha: float) -> tuple[LatentOperation]:
        def operation(latent: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return sharpen_latent(latent, sharpen_radius, sigma, alpha)

        return (operation,)


# --- rebatching ------------------------------------------------------------------------------------


class _Run:
    """Consecutive latents of one spatial size, concatenated: samples, full-size masks, indices."""

    def __init__(self, samples: torch.Tensor, mask: torch.Tensor, indices: list[int]) -> None:
        self.samples, self.mask, self.indices = samples, mask, indices

    def fits(self, other: _Run) -> bool:
        return self.samples.shape[-2:] == other.samples.shape[-2:]

    def extend(self, other: _Run) -> None:
        import torch

        self.samples = torch.cat((self.samples, other.samples))
        self.mask = torch.cat((self.mask, other.mask))
        self.indices = self.indices + other.indices

    def take(self, count: int) -> Latent:
        """The first ``count`` items as a LATENT; they leave the run."""
        out = {
            "samples": self.samples[:count],
            "noise_mask": self.mask[:count],
            "batch_index": self.indices[:count],
        }
        self.samples, self.mask, self.indices = self.samples[count:], self.mask[count:], self.indices[count:]
        return out


def _run_of(latent: Latent, offset: int) -> _Run:
    import torch

    from plugins.core_nodes.conds import repeat_to_batch_size

    samples = latent["samples"]
    b, h, w = samples.shape[0], samples.shape[-2], samples.shape[-1]
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((b, 1, h * 8, w * 8))
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if mask.shape[-2:] != (h * 8, w * 8):
        # Masks of one run are concatenated, so all are brought to pixel size first.
        mask = torch.nn.functional.interpolate(mask.float(), size=(h * 8, w * 8), mode="bilinear")
    mask = repeat_to_batch_size(mask, b) if mask.shape[0] < b else mask
    indices = list(latent.get("batch_index", range(offset, offset + b)))
    return _Run(samples, mask, indices)


def rebatch_latents(latents: list[Latent], batch_size: int) -> list[Latent]:
    """The items of ``latents`` regrouped into batches of ``batch_size`` (fewer at the end of a run);
    latents of different sizes never share a batch. Masks that keep everything are dropped."""
    out: list[Latent] = []
    current: _Run | None = None
    seen = 0
    for latent in latents:
        run = _run_of(latent, seen)
        seen += len(run.indices)
        if current is None:
            current = run
        elif not current.fits(run):
            out.append(current.take(batch_size))
            current = run
        else:
            current.extend(run)
        while current.samples.shape[0] > batch_size:
            out.append(current.take(batch_size))
    if current is not None and current.samples.shape[0] > 0:
        out.append(current.take(batch_size))
    for batch in out:
        if float(batch["noise_mask"].mean()) == 1.0:
            del batch["noise_mask"]
    return out


class RebatchLatents(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_rebatch"
    CATEGORY = "model/latent/batch"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "rebatch"
    INPUT_IS_LIST = True
    OUTPUT_IS_LIST = (True,)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"latents": ("LATENT",), "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}
        }

    def rebatch(self, latents: list[Latent], batch_size: list[int]) -> tuple[list[Latent]]:
        return (rebatch_latents(latents, int(batch_size[0])),)


NODES: dict[str, tuple[type, str | None]] = {
    "LatentAdd": (LatentAdd, None),
    "LatentSubtract": (LatentSubtract, None),
    "LatentMultiply": (LatentMultiply, None),
    "LatentInterpolate": (LatentInterpolate, None),
    "LatentConcat": (LatentConcat, None),
    "LatentCut": (LatentCut, None),
    "LatentCutToBatch": (LatentCutToBatch, None),
    "LatentBatch": (LatentBatch, "Batch Latents (DEPRECATED)"),
    "LatentBatchSeedBehavior": (LatentBatchSeedBehavior, None),
    "LatentApplyOperation": (LatentApplyOperation, None),
    "LatentApplyOperationCFG": (LatentApplyOperationCFG, None),
    "LatentOperationTonemapReinhard": (LatentOperationTonemapReinhard, None),
    "LatentOperationSharpen": (LatentOperationSharpen, None),
    "ReplaceVideoLatentFrames": (ReplaceVideoLatentFrames, "Replace Video Latent Frames"),
    "RebatchLatents": (RebatchLatents, "Rebatch Latents"),
}
