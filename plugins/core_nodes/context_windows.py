"""Context windows: evaluate a long latent (video frames along ``dim``) in overlapping windows.

A MODEL's ``model_options["context_handler"]`` takes over ``calc_cond_batch`` when the latent is
longer than ``context_length`` along ``dim``: the step's windows (lists of indices, from the
schedule) are evaluated one by one on the sliced latent, sigmas and conds, and each prediction is
fused back: ``flat`` / ``pyramid`` / ``overlap-linear`` add it times per-index weights and divide
by the summed weights; ``relative`` keeps a running average weighted by each index's distance to
its window's centre. Schedules, weights and the options (FreeNoise, retained indices, a causal
anchor frame, conds split by window) are the reference's (``comfy.context_windows``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kernel.progress import throw_if_interrupted

log = logging.getLogger("comfykernel.core_nodes")


class ContextSchedules:
    UNIFORM_LOOPED = "looped_uniform"
    UNIFORM_STANDARD = "standard_uniform"
    STATIC_STANDARD = "standard_static"
    BATCHED = "batched"


class ContextFuseMethods:
    FLAT = "flat"
    PYRAMID = "pyramid"
    RELATIVE = "relative"
    OVERLAP_LINEAR = "overlap-linear"

    LIST = [PYRAMID, FLAT, OVERLAP_LINEAR]
    LIST_STATIC = [PYRAMID, RELATIVE, FLAT, OVERLAP_LINEAR]


@dataclass
class ContextSchedule:
    name: str
    func: Callable[..., list[list[int]]]


@dataclass
class ContextFuseMethod:
    name: str
    func: Callable[..., Any]


def _index(dim: int, idx: Any) -> tuple[Any, ...]:
    return (*([slice(None)] * dim), idx)


class IndexListContextWindow:
    """One window: latent indices along ``dim`` (with an optional causal anchor in front)."""

    def __init__(self, index_list: list[int], dim: int = 0, total_frames: int = 0, context_overlap: int = 0) -> None:
        self.index_list = index_list
        self.context_length = len(index_list)
        self.context_overlap = context_overlap
        self.dim = dim
        self.total_frames = total_frames
        self.center_ratio = (min(index_list) + max(index_list)) / (2 * total_frames) if total_frames else 0.0
        self.causal_anchor_index: int | None = None

    def get_tensor(
        self, full: torch.Tensor, device: Any = None, dim: int | None = None, retain_index_list: Sequence[int] = ()
    ) -> torch.Tensor:
        dim = self.dim if dim is None else dim
        if dim == 0 and full.shape[dim] == 1:
            return full
        indices = list(self.index_list)
        if self.causal_anchor_index is not None and self.causal_anchor_index >= 0:
            indices = [self.causal_anchor_index, *indices]
        window = full[_index(dim, indices)]
        if retain_index_list:
            # Those positions of the window keep the full tensor's values at the same indices.
            window[_index(dim, list(retain_index_list))] = full[_index(dim, list(retain_index_list))]
        return window.to(device) if device is not None else window

    def add_window(self, full: torch.Tensor, to_add: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        dim = self.dim if dim is None else dim
        full[_index(dim, self.index_list)] += to_add
        return full

    def get_region_index(self, num_regions: int) -> int:
        return min(max(int(self.center_ratio * num_regions), 0), num_regions - 1)


def ordered_halving(val: int) -> float:
    """``val``'s 64 bits reversed, as a fraction of 2**64 (0, 1/2, 1/4, 3/4, ...)."""
    return int(f"{val:064b}"[::-1], 2) / (1 << 64)


def does_window_roll_over(window: list[int], num_frames: int) -> tuple[bool, int]:
    prev = -1
    for i, val in enumerate(window):
        val = val % num_frames
        if val < prev:
            return True, i
        prev = val
    return False, -1


def shift_window_to_start(window: list[int], num_frames: int) -> None:
    start = window[0]
    for i in range(len(window)):
        window[i] = ((window[i] - start) + num_frames) % num_frames


def shift_window_to_end(window: list[int], num_frames: int) -> None:
    shift_window_to_start(window, num_frames)
    delta = num_frames - window[-1] - 1
    for i in range(len(window)):
        window[i] += delta


def _uniform(num_frames: int, handler: IndexListContextHandler, end_extra: int) -> list[list[int]]:
    stride = min(handler.context_stride, int(math.ceil(math.log2(num_frames / handler.context_length))) + 1)
    windows: list[list[int]] = []
    for step in (1 << s for s in range(stride)):
        pad = int(round(num_frames * ordered_halving(handler._step)))
        start = int(ordered_halving(handler._step) * step) + pad
        stop = num_frames + pad + end_extra
        for j in range(start, stop, handler.context_length * step - handler.context_overlap):
            windows.append([e % num_frames for e in range(j, j + handler.context_length * step, step)])
    return windows


def create_windows_uniform_looped(num_frames: int, handler: IndexListContextHandler, model_options: Any) -> list[list[int]]:
    if num_frames < handler.context_length:
        return [list(range(num_frames))]
    return _uniform(num_frames, handler, 0 if handler.closed_loop else -handler.context_overlap)


def create_windows_uniform_standard(num_frames: int, handler: IndexListContextHandler, model_options: Any) -> list[list[int]]:
    """Uniform windows, those that wrap shifted to the end instead; repeats dropped."""
    if num_frames <= handler.context_length:
        return [list(range(num_frames))]
    windows = _uniform(num_frames, handler, -handler.context_overlap)
    drop = []
    i = 0
    while i < len(windows):
        rolls, at = does_window_roll_over(windows[i], num_frames)
        if rolls:
            value = windows[i][at]
            shift_window_to_end(windows[i], num_frames)
            if value not in windows[(i + 1) % len(windows)]:
                windows.insert(i + 1, list(range(value, value + handler.context_length)))
        if any(windows[i] == windows[j] for j in range(i)):
            drop.append(i)
        i += 1
    for i in reversed(drop):
        windows.pop(i)
    return windows


def create_windows_static_standard(num_frames: int, handler: IndexListContextHandler, model_options: Any) -> list[list[int]]:
    """Fixed windows every ``length - overlap`` frames, the last moved back to end at the end."""
    if num_frames <= handler.context_length:
        return [list(range(num_frames))]
    windows = []
    for start in range(0, num_frames, handler.context_length - handler.context_overlap):
        if start + handler.context_length >= num_frames:
            last = num_frames - handler.context_length
            windows.append(list(range(last, last + handler.context_length)))
            break
        windows.append(list(range(start, start + handler.context_length)))
    return windows


def create_windows_batched(num_frames: int, handler: IndexListContextHandler, model_options: Any) -> list[list[int]]:
    """Back-to-back windows without overlap (the last may be shorter)."""
    if num_frames <= handler.context_length:
        return [list(range(num_frames))]
    return [
        list(range(s, min(s + handler.context_length, num_frames))) for s in range(0, num_frames, handler.context_length)
    ]


CONTEXT_MAPPING: dict[str, Callable[..., list[list[int]]]] = {
    ContextSchedules.UNIFORM_LOOPED: create_windows_uniform_looped,
    ContextSchedules.UNIFORM_STANDARD: create_windows_uniform_standard,
    ContextSchedules.STATIC_STANDARD: create_windows_static_standard,
    ContextSchedules.BATCHED: create_windows_batched,
}


def get_matching_context_schedule(context_schedule: str) -> ContextSchedule:
    func = CONTEXT_MAPPING.get(context_schedule)
    if func is None:
        raise ValueError(f"Unknown context_schedule '{context_schedule}'.")
    return ContextSchedule(context_schedule, func)


def create_weights_flat(length: int, **kwargs: Any) -> list[float]:
    return [1.0] * length


def create_weights_pyramid(length: int, **kwargs: Any) -> list[float]:
    """1, 2, ... up to the middle and back down (the FreeNoise weighted average)."""
    half = length // 2 if length % 2 == 0 else (length + 1) // 2
    rising = list(range(1, half + 1))
    falling = list(range(half, 0, -1)) if length % 2 == 0 else list(range(half - 1, 0, -1))
    return [float(w) for w in rising + falling]


def create_weights_overlap_linear(
    length: int, full_length: int, idxs: list[int], context_overlap: int, **kwargs: Any
) -> torch.Tensor:
    """1 inside; the overlap ramps in (not on the first window) and out (not on the last)."""
    weights = torch.ones(length)
    if min(idxs) > 0:
        weights[:context_overlap] = torch.linspace(1e-37, 1, context_overlap)
    if max(idxs) < full_length - 1:
        weights[-context_overlap:] = torch.linspace(1, 1e-37, context_overlap)
    return weights


FUSE_MAPPING: dict[str, Callable[..., Any]] = {
    ContextFuseMethods.FLAT: create_weights_flat,
    ContextFuseMethods.PYRAMID: create_weights_pyramid,
    ContextFuseMethods.RELATIVE: create_weights_pyramid,
    ContextFuseMethods.OVERLAP_LINEAR: create_weights_overlap_linear,
}


def get_matching_fuse_method(fuse_method: str) -> ContextFuseMethod:
    func = FUSE_MAPPING.get(fuse_method)
    if func is None:
        raise ValueError(f"Unknown fuse_method '{fuse_method}'.")
    return ContextFuseMethod(fuse_method, func)


def get_context_weights(
    length: int, full_length: int, idxs: list[int], handler: IndexListContextHandler, sigma: Any = None,
    context_overlap: int | None = None,
) -> Any:  # fmt: skip
    overlap = handler.context_overlap if context_overlap is None else context_overlap
    return handler.fuse_method.func(
        length, sigma=sigma, handler=handler, full_length=full_length, idxs=idxs, context_overlap=overlap
    )


def match_weights_to_dim(weights: Any, x_in: torch.Tensor, dim: int, device: Any = None) -> torch.Tensor:
    """Per-index weights shaped to broadcast along ``dim`` of ``x_in``."""
    tensor = torch.as_tensor(weights, dtype=torch.float32).to(device=device)
    shape = [1] * x_in.ndim
    shape[dim] = tensor.shape[0]
    return tensor.reshape(shape)


def get_shape_for_dim(x_in: torch.Tensor, dim: int) -> list[int]:
    shape = [1] * x_in.ndim
    shape[dim] = x_in.shape[dim]
    return shape


def apply_freenoise(noise: torch.Tensor, dim: int, context_length: int, context_overlap: int, seed: int) -> torch.Tensor:
    """FreeNoise: each window's new frames take a shuffled copy of the previous window's noise."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    length = noise.shape[dim]
    delta = context_length - context_overlap
    for start in range(0, length - context_length, delta):
        place = start + context_length
        count = min(delta, length - place)
        if count <= 0:
            break
        picks = torch.randperm(count, generator=generator, device="cpu") + start
        noise[_index(dim, slice(place, place + count))] = noise[_index(dim, picks)]
    return noise


def _parse_indices(text: str | Sequence[int] | None) -> list[int]:
    if not text:
        return []
    if isinstance(text, str):
        try:
            return [int(x.strip()) for x in text.split(",")]
        except ValueError:
            raise ValueError(f"an index list must be integers separated by commas, got {text!r}") from None
    return [int(x) for x in text]


class IndexListContextHandler:
    """The ``context_handler`` a context-windows MODEL carries (see the module docstring)."""

    def __init__(
        self, context_schedule: ContextSchedule, fuse_method: ContextFuseMethod, context_length: int = 1,
        context_overlap: int = 0, context_stride: int = 1, closed_loop: bool = False, dim: int = 0,
        freenoise: bool = False, cond_retain_index_list: str | Sequence[int] = "", split_conds_to_windows: bool = False,
        latent_retain_index_list: str | Sequence[int] = "", causal_window_fix: bool = True,
    ) -> None:  # fmt: skip
        self.context_schedule = context_schedule
        self.fuse_method = fuse_method
        self.context_length = context_length
        self.context_overlap = context_overlap
        self.context_stride = context_stride
        self.closed_loop = closed_loop
        self.dim = dim
        self.freenoise = freenoise
        self.cond_retain_index_list = _parse_indices(cond_retain_index_list)
        self.split_conds_to_windows = split_conds_to_windows
        self.latent_retain_index_list = _parse_indices(latent_retain_index_list)
        self.causal_window_fix = causal_window_fix
        self._step = 0
        self.callbacks: dict[str, Any] = {}

    def should_use_context(self, model: Any, conds: Any, x_in: torch.Tensor, timestep: torch.Tensor, model_options: Any) -> bool:
        if x_in.ndim > self.dim and x_in.size(self.dim) > self.context_length:
            log.info("Using context windows: length %d, overlap %d for %d frames", self.context_length,
                     self.context_overlap, x_in.size(self.dim))  # fmt: skip
            return True
        return False

    def set_step(self, timestep: torch.Tensor, model_options: dict[str, Any]) -> None:
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        current = timestep.reshape(-1)[0].to(sigmas.dtype)
        matches = torch.nonzero(torch.isclose(sigmas, current, rtol=0.0001))
        if matches.numel():
            # A sampler's sub-step keeps the last full step's number.
            self._step = int(matches[0].item())

    def get_context_windows(self, model: Any, x_in: torch.Tensor, model_options: Any) -> list[IndexListContextWindow]:
        full = x_in.size(self.dim)
        return [
            IndexListContextWindow(w, dim=self.dim, total_frames=full, context_overlap=self.context_overlap)
            for w in self.context_schedule.func(full, self, model_options)
        ]

    def _resize_value(self, value: Any, x_in: torch.Tensor, window: IndexListContextWindow) -> Any:
        frames = x_in.size(self.dim)

        def fits(t: torch.Tensor) -> bool:
            return (self.dim < t.ndim and t.size(self.dim) == frames) or (t.ndim < self.dim and t.size(0) == frames)

        if isinstance(value, torch.Tensor):
            return window.get_tensor(value) if fits(value) else value
        inner = getattr(value, "cond", None)
        if isinstance(inner, torch.Tensor) and fits(inner) and hasattr(value, "_copy_with"):
            return value._copy_with(window.get_tensor(inner, retain_index_list=self.cond_retain_index_list))
        return value

    def get_resized_cond(self, cond_in: list[dict[str, Any]] | None, x_in: torch.Tensor, window: IndexListContextWindow, device: Any = None) -> list[dict[str, Any]] | None:
        """The window's copy of each cond dict: tensors (and model conds) along the frame axis sliced."""
        if cond_in is None:
            return None
        if self.split_conds_to_windows and len(cond_in) > 1:
            cond_in = [cond_in[window.get_region_index(len(cond_in))]]
        out = []
        for c in cond_in:
            resized = dict(c)
            for key, value in c.items():
                if isinstance(value, torch.Tensor):
                    if self.dim < value.ndim and value.size(self.dim) == x_in.size(self.dim):
                        resized[key] = window.get_tensor(value)
                elif isinstance(value, dict) and key == "model_conds":
                    resized[key] = {k: self._resize_value(v, x_in, window) for k, v in value.items()}
            out.append(resized)
        return out

    def execute(self, calc_cond_batch: Callable[..., list[torch.Tensor]], model: Any, conds: Sequence[Any], x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict[str, Any]) -> list[torch.Tensor]:
        self.set_step(timestep, model_options)
        windows = self.get_context_windows(model, x_in, model_options)
        relative = self.fuse_method.name == ContextFuseMethods.RELATIVE
        out = [torch.zeros_like(x_in) for _ in conds]
        make = torch.ones if relative else torch.zeros
        counts = [make(get_shape_for_dim(x_in, self.dim), device=x_in.device) for _ in conds]
        biases = [[0.0] * x_in.shape[self.dim] for _ in conds]
        for window in windows:
            throw_if_interrupted()
            anchored = False
            if self.causal_window_fix:
                anchor = window.index_list[0] - 1
                if 0 <= anchor < x_in.size(self.dim):
                    window.causal_anchor_index = anchor
                    anchored = True
            sub_x = window.get_tensor(x_in, retain_index_list=self.latent_retain_index_list)
            model_options["transformer_options"]["context_window"] = window
            sub_t = window.get_tensor(timestep, dim=0)
            sub_conds = [self.get_resized_cond(c, x_in, window) for c in conds]
            results = calc_cond_batch(model, sub_conds, sub_x, sub_t, model_options)
            if anchored:
                results = [r.narrow(self.dim, 1, r.shape[self.dim] - 1) for r in results]
            self.combine_context_window_results(x_in, results, window, timestep, out, counts, biases)
        if not relative:
            for i in range(len(out)):
                out[i] /= counts[i]
        return out

    def combine_context_window_results(
        self, x_in: torch.Tensor, results: Sequence[torch.Tensor], window: IndexListContextWindow,
        timestep: torch.Tensor, out: list[torch.Tensor], counts: list[torch.Tensor], biases: list[list[float]],
    ) -> None:  # fmt: skip
        first, last = window.index_list[0], window.index_list[-1]
        if self.fuse_method.name == ContextFuseMethods.RELATIVE:
            for pos, idx in enumerate(window.index_list):
                # 1 at the window's centre, falling to (at least) 0.01 at its edges.
                bias = max(1e-2, 1 - abs(idx - (first + last) / 2) / ((last - first + 1e-2) / 2))
                for i, result in enumerate(results):
                    total = biases[i][idx]
                    at, src = _index(self.dim, idx), _index(self.dim, pos)
                    out[i][at] = out[i][at] * (total / (total + bias)) + result[src] * (bias / (total + bias))
                    biases[i][idx] = total + bias
            return
        weights = get_context_weights(window.context_length, x_in.shape[self.dim], window.index_list, self,
                                      sigma=timestep, context_overlap=window.context_overlap)  # fmt: skip
        tensor = match_weights_to_dim(weights, x_in, self.dim, device=x_in.device)
        for i, result in enumerate(results):
            window.add_window(out[i], result * tensor)
            window.add_window(counts[i], tensor)

    def apply_freenoise(self, noise: torch.Tensor, seed: int) -> torch.Tensor:
        return apply_freenoise(noise, self.dim, self.context_length, self.context_overlap, seed)


def _sampler_sample_wrapper(executor: Any, guider: Any, sigmas: Any, extra_args: dict[str, Any], callback: Any,
                            noise: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # fmt: skip
    """FreeNoise: the run's noise shuffled window to window before sampling starts."""
    handler = extra_args["model_options"].get("context_handler")
    if handler is not None and handler.freenoise:
        noise = handler.apply_freenoise(noise, int(extra_args.get("seed") or 0))
    return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)


def create_sampler_sample_wrapper(model: Any) -> None:
    from plugins.core_nodes.models.extension import WrappersMP

    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "ContextWindows_sampler_sample", _sampler_sample_wrapper)


__all__ = [
    "ContextFuseMethods",
    "ContextSchedules",
    "IndexListContextHandler",
    "IndexListContextWindow",
    "apply_freenoise",
    "create_sampler_sample_wrapper",
    "get_context_weights",
    "get_matching_context_schedule",
    "get_matching_fuse_method",
    "ordered_halving",
]
