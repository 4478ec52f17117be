"""EasyCache and LazyCache: skip model evaluations whose output would barely change.

Both keep, between steps, the input ``x`` and the output of the last evaluation they ran
(subsampled every 8th pixel), and the *relative transformation rate* ``k`` = mean|output change|
/ mean|input change| measured between the last two evaluations. At a step whose sigma lies between
``start_percent`` and ``end_percent`` of the schedule they predict the output change as
``k * mean|x - x_prev| / mean|output_prev|`` and add it to a running sum; while the sum stays
below ``reuse_threshold`` the evaluation is skipped and the output taken as ``x`` plus the last
``output - x`` difference; once it reaches the threshold the model runs and the sum restarts.

EasyCache works at the diffusion model (a ``DIFFUSION_MODEL`` wrapper; one cached difference per
cond ``uuid``, the decision made by the first cond of the step and followed by the others of the
same step); LazyCache at the guider's prediction (a ``PREDICT_NOISE`` wrapper: one difference for
the guided result). The rules, names and state are the reference's (``nodes_easycache``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

log = logging.getLogger("comfykernel.core_nodes")


def _transformer_options(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusion model call's ``transformer_options``: its last positional argument, or by name."""
    if args and isinstance(args[-1], dict):
        return args[-1]
    found = kwargs.get("transformer_options")
    if isinstance(found, dict):
        return found
    return args[-2]


class _CacheState:
    """What both caches keep between steps."""

    name = "Cache"

    def __init__(
        self, reuse_threshold: float, start_percent: float, end_percent: float, subsample_factor: int = 8,
        offload_cache_diff: bool = False, verbose: bool = False,
    ) -> None:  # fmt: skip
        self.reuse_threshold = reuse_threshold
        self.start_percent = start_percent
        self.end_percent = end_percent
        self.subsample_factor = subsample_factor
        self.offload_cache_diff = offload_cache_diff
        self.verbose = verbose
        self.start_t = 0.0
        self.end_t = 0.0
        self.relative_transformation_rate: Any = None
        self.cumulative_change_rate: Any = 0.0
        self.initial_step = True
        self.skip_current_step = False
        self.x_prev_subsampled: torch.Tensor | None = None
        self.output_prev_subsampled: torch.Tensor | None = None
        self.output_prev_norm: torch.Tensor | None = None
        self.output_change_rates: list[float] = []
        self.approx_output_change_rates: list[float] = []
        self.total_steps_skipped = 0
        self.state_metadata: Any = None

    def clone(self) -> _CacheState:
        return type(self)(
            self.reuse_threshold, self.start_percent, self.end_percent, self.subsample_factor,
            self.offload_cache_diff, self.verbose,
        )  # fmt: skip

    def prepare_timesteps(self, model_sampling: Any) -> _CacheState:
        self.start_t = model_sampling.percent_to_sigma(self.start_percent)
        self.end_t = model_sampling.percent_to_sigma(self.end_percent)
        return self

    def is_past_end_timestep(self, timestep: torch.Tensor) -> bool:
        return not bool(timestep.reshape(-1)[0] > self.end_t)

    def should_do_easycache(self, timestep: torch.Tensor) -> bool:
        return bool(timestep.reshape(-1)[0] <= self.start_t)

    def has_x_prev_subsampled(self) -> bool:
        return self.x_prev_subsampled is not None

    def has_output_prev_norm(self) -> bool:
        return self.output_prev_norm is not None

    def has_relative_transformation_rate(self) -> bool:
        return self.relative_transformation_rate is not None

    def _metadata(self, x: torch.Tensor) -> Any:
        return (x.device, x.dtype, tuple(x.shape[1:]))

    def check_metadata(self, x: torch.Tensor) -> bool:
        """The state is for one kind of input; another shape / dtype / device starts it over."""
        meta = self._metadata(x)
        if self.state_metadata is None:
            self.state_metadata = meta
            return True
        if meta == self.state_metadata:
            return True
        log.warning("%s - Tensor shape, dtype or device changed, resetting state", self.name)
        self.reset()
        return False

    def reset(self) -> _CacheState:
        # As the reference: a reset leaves a rate of 0 (not "unknown").
        self.relative_transformation_rate = 0.0
        self.cumulative_change_rate = 0.0
        self.initial_step = True
        self.skip_current_step = False
        self.output_change_rates = []
        self.approx_output_change_rates = []
        self.x_prev_subsampled = None
        self.output_prev_subsampled = None
        self.output_prev_norm = None
        self.total_steps_skipped = 0
        self.state_metadata = None
        return self

    def _decide_skip(self, input_change: torch.Tensor) -> bool:
        """Add this step's predicted output change; True (skip) while the sum stays under the threshold."""
        approx = (self.relative_transformation_rate * input_change) / self.output_prev_norm
        self.cumulative_change_rate += approx
        if self.cumulative_change_rate < self.reuse_threshold:
            if self.verbose:
                log.info("%s - skipping step; cumulative change rate %s", self.name, self.cumulative_change_rate)
            return True
        self.cumulative_change_rate = 0.0
        return False

    def _learn(self, output_sub: torch.Tensor, input_change: torch.Tensor | None) -> None:
        """After an evaluation: the rate k from the last two evaluations' changes."""
        if not self.has_output_prev_norm():
            return
        assert self.output_prev_subsampled is not None and self.output_prev_norm is not None
        output_change = (output_sub - self.output_prev_subsampled).flatten().abs().mean()
        if self.verbose:
            self.output_change_rates.append(float(output_change / self.output_prev_norm))
        if self.has_relative_transformation_rate() and input_change is not None:
            approx = (self.relative_transformation_rate * input_change) / self.output_prev_norm
            self.approx_output_change_rates.append(float(approx))
        if input_change is not None:
            self.relative_transformation_rate = output_change / input_change


class EasyCacheHolder(_CacheState):
    """EasyCache's state: one cached ``output - x`` per cond uuid; the first cond decides."""

    name = "EasyCache"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_cond_uuid: Any = None
        self.uuid_cache_diffs: dict[Any, torch.Tensor] = {}
        # An output shorter than its input along a dimension is cut from the start (cosmos-style).
        self.allow_mismatch = True
        self.cut_from_start = True

    def reset(self) -> EasyCacheHolder:
        super().reset()
        self.first_cond_uuid = None
        self.uuid_cache_diffs = {}
        return self

    def has_first_cond_uuid(self, uuids: Sequence[Any]) -> bool:
        return self.first_cond_uuid in uuids

    def subsample(self, x: torch.Tensor, uuids: Sequence[Any], clone: bool = True) -> torch.Tensor:
        """The first cond's part of the batch, every ``subsample_factor``-th pixel."""
        per = x.shape[0] // len(uuids)
        i = list(uuids).index(self.first_cond_uuid)
        part = x[i * per : (i + 1) * per]
        if self.subsample_factor > 1:
            part = part[..., :: self.subsample_factor, :: self.subsample_factor]
        return part.clone() if clone else part

    def _fit(self, source_shape: Sequence[int], target_shape: Sequence[int]) -> list[slice]:
        """Slices cutting the larger of two shapes down to the other along dims 1.. (not batch)."""
        out = []
        for have, want in zip(source_shape[1:], target_shape[1:], strict=False):
            if have == want:
                out.append(slice(None))
            elif self.cut_from_start:
                out.append(slice(want - have, None))
            else:
                out.append(slice(None, have))
        return out

    def apply_cache_diff(self, x: torch.Tensor, uuids: Sequence[Any]) -> torch.Tensor:
        if self.first_cond_uuid in uuids:
            self.total_steps_skipped += 1
        per = x.shape[0] // len(uuids)
        for i, uid in enumerate(uuids):
            diff = self.uuid_cache_diffs[uid]
            index: list[slice] = [slice(i * per, (i + 1) * per)]
            if tuple(x.shape[1:]) != tuple(diff.shape[1:]):
                if not self.allow_mismatch:
                    raise ValueError(f"cached dims {tuple(diff.shape)} do not match x dims {tuple(x.shape)}")
                index += self._fit(diff.shape, x.shape)
            x[tuple(index)] += diff.to(x.device)
        return x

    def update_cache_diff(self, output: torch.Tensor, x: torch.Tensor, uuids: Sequence[Any]) -> None:
        if tuple(output.shape[1:]) != tuple(x.shape[1:]):
            if not self.allow_mismatch:
                raise ValueError(f"output dims {tuple(output.shape)} do not match x dims {tuple(x.shape)}")
            x = x[(slice(None), *self._fit(output.shape, x.shape))]
        diff = output - x
        per = diff.shape[0] // len(uuids)
        for i, uid in enumerate(uuids):
            self.uuid_cache_diffs[uid] = diff[i * per : (i + 1) * per]


class LazyCacheHolder(_CacheState):
    """LazyCache's state: one cached ``output - x`` for the guided prediction."""

    name = "LazyCache"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_diff: torch.Tensor | None = None

    def _metadata(self, x: torch.Tensor) -> Any:
        return (x.device, x.dtype, tuple(x.shape))

    def reset(self) -> LazyCacheHolder:
        super().reset()
        self.cache_diff = None
        return self

    def subsample(self, x: torch.Tensor, clone: bool = True) -> torch.Tensor:
        part = x[..., :: self.subsample_factor, :: self.subsample_factor] if self.subsample_factor > 1 else x
        return part.clone() if clone else part

    def apply_cache_diff(self, x: torch.Tensor) -> torch.Tensor:
        assert self.cache_diff is not None
        self.total_steps_skipped += 1
        return x + self.cache_diff.to(x.device)

    def update_cache_diff(self, output: torch.Tensor, x: torch.Tensor) -> None:
        self.cache_diff = output - x


# --- wrappers ----------------------------------------------------------------------------------


def easycache_forward_wrapper(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``DIFFUSION_MODEL`` wrapper: skip the network for every cond of a step the first cond skips."""
    x: torch.Tensor = args[0]
    options = _transformer_options(args, kwargs)
    cache: EasyCacheHolder = options["easycache"]
    sigmas = options.get("sigmas")
    uuids = options["uuids"]
    if sigmas is not None and cache.is_past_end_timestep(sigmas):
        return executor(*args, **kwargs)
    first = cache.has_first_cond_uuid(uuids)
    input_change = None
    if sigmas is not None and cache.should_do_easycache(sigmas):
        cache.check_metadata(x)
        if cache.skip_current_step:
            return cache.apply_cache_diff(x, uuids)
        if cache.initial_step:
            cache.first_cond_uuid = uuids[0]
            first = cache.has_first_cond_uuid(uuids)
            cache.initial_step = False
        if first:
            if cache.has_x_prev_subsampled():
                assert cache.x_prev_subsampled is not None
                input_change = (cache.subsample(x, uuids, clone=False) - cache.x_prev_subsampled).flatten().abs().mean()
            if cache.has_output_prev_norm() and cache.has_relative_transformation_rate():
                if cache._decide_skip(input_change):  # type: ignore[arg-type]
                    cache.skip_current_step = True
                    return cache.apply_cache_diff(x, uuids)
    output: torch.Tensor = executor(*args, **kwargs)
    if first:
        cache._learn(cache.subsample(output, uuids, clone=False), input_change)
    cache.update_cache_diff(output, x, uuids)
    if first:
        cache.x_prev_subsampled = cache.subsample(x, uuids)
        cache.output_prev_subsampled = cache.subsample(output, uuids)
        cache.output_prev_norm = output.flatten().abs().mean()
    return output


def easycache_calc_cond_batch_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Each evaluation starts undecided (the first cond's call decides for the step)."""
    model_options = args[-1]
    model_options["transformer_options"]["easycache"].skip_current_step = False
    return executor(*args, **kwargs)


def lazycache_predict_noise_wrapper(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``PREDICT_NOISE`` wrapper: skip the whole guided prediction."""
    x: torch.Tensor = args[0]
    timestep: torch.Tensor = args[1]
    model_options = args[2] if len(args) > 2 and args[2] is not None else executor.class_obj.model_options
    cache: LazyCacheHolder = model_options["transformer_options"]["easycache"]
    if cache.is_past_end_timestep(timestep):
        return executor(*args, **kwargs)
    input_change = None
    if cache.should_do_easycache(timestep):
        cache.check_metadata(x)
        if cache.has_x_prev_subsampled():
            assert cache.x_prev_subsampled is not None
            input_change = (cache.subsample(x, clone=False) - cache.x_prev_subsampled).flatten().abs().mean()
            if cache.has_output_prev_norm() and cache.has_relative_transformation_rate():
                if cache._decide_skip(input_change):
                    cache.skip_current_step = True
                    return cache.apply_cache_diff(x)
    output: torch.Tensor = executor(*args, **kwargs)
    cache._learn(cache.subsample(output, clone=False), input_change)
    cache.update_cache_diff(output, x)
    cache.x_prev_subsampled = cache.subsample(x)
    cache.output_prev_subsampled = cache.subsample(output)
    cache.output_prev_norm = output.flatten().abs().mean()
    return output


def cache_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """``OUTER_SAMPLE`` wrapper: a fresh cache on this run's schedule, reported and dropped after."""
    from plugins.core_nodes.guidance import copy_model_options

    guider = executor.class_obj
    original = guider.model_options
    guider.model_options = copy_model_options(original)
    to = guider.model_options["transformer_options"]
    sampling = guider.model_patcher.get_model_object("model_sampling")
    cache = to["easycache"] = to["easycache"].clone().prepare_timesteps(sampling)
    log.info(
        "%s enabled - threshold: %s, start_percent: %s, end_percent: %s",
        cache.name, cache.reuse_threshold, cache.start_percent, cache.end_percent,
    )  # fmt: skip
    try:
        return executor(*args, **kwargs)
    finally:
        total = len(args[3]) - 1
        skipped = cache.total_steps_skipped
        speedup = total / (total - skipped) if total != skipped else 1.0
        log.info("%s - skipped %d/%d steps (%.2fx speedup).", cache.name, skipped, total, speedup)
        # Kept readable after the run (tests and verbose reports); the next run clones afresh.
        guider.last_step_cache = cache
        cache_state = cache.total_steps_skipped
        cache.reset()
        cache.total_steps_skipped = cache_state
        guider.model_options = original


__all__ = [
    "EasyCacheHolder",
    "LazyCacheHolder",
    "cache_sample_wrapper",
    "easycache_calc_cond_batch_wrapper",
    "easycache_forward_wrapper",
    "lazycache_predict_noise_wrapper",
]
