"""The objects a processed cond dict's ``model_conds`` hold (the reference's ``comfy.conds``).

``process_conds`` (:mod:`plugins.core_nodes.cond_prep`) turns every CONDITIONING entry into a
dict whose ``model_conds`` map a model-call keyword (``c_crossattn``, ``c_concat``, ``y``...)
to one of these. For each model call, ``process_cond`` fits the value to the call's batch (and,
for noise-shaped values, to the entry's area); entries whose values ``can_concat`` share one
call, their values joined by ``concat``. Packs build them in ``extra_conds`` overrides
(IC-Light's ``CONDNoiseShape(concat_latent)``) and rewrite ``.cond`` with ``_copy_with``
(AnimateDiff's context windows), so the attribute and method names are the reference's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger("comfykernel.core_nodes")


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """``tensor`` cut to ``batch_size`` along ``dim``, or tiled up to it."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = math.ceil(batch_size / size)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def batch_pick_indices(count: int, batch_size: int) -> list[int]:
    """Which of ``count`` items make a batch of ``batch_size`` (> 1): shrinking keeps the first
    and last, growing gives each item an equal run (the reference's image-batch resampling)."""
    if batch_size < count:
        step = (count - 1) / (batch_size - 1)
        return [min(round(i * step), count - 1) for i in range(batch_size)]
    step = count / batch_size
    return [min(math.floor((i + 0.5) * step), count - 1) for i in range(batch_size)]


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` items picked evenly from ``tensor``'s batch (:func:`batch_pick_indices`)."""
    count = tensor.shape[0]
    if count == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    return tensor[batch_pick_indices(count, batch_size)]


def is_equal(x: Any, y: Any) -> bool:
    """Deep equality over tensors, dicts, lists and tuples (same container types required)."""
    if torch.is_tensor(x) and torch.is_tensor(y):
        return torch.equal(x, y)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(is_equal(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return type(x) is type(y) and len(x) == len(y) and all(is_equal(a, b) for a, b in zip(x, y, strict=True))
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - an odd __eq__ means "not the same"
        log.warning("comparison issue with COND")
        return False


class CONDRegular:
    """A tensor batched along dim 0: repeated or cut to the batch size, concatenated as is."""

    def __init__(self, cond: Any) -> None:
        self.cond = cond

    def _copy_with(self, cond: Any) -> CONDRegular:
        return self.__class__(cond)

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other: CONDRegular) -> bool:
        return self.cond.shape == other.cond.shape and self._same_device(other)

    def _same_device(self, other: CONDRegular) -> bool:
        """Whether the two tensors are on one device (told in the log when not: no shared call)."""
        if self.cond.device != other.cond.device:
            log.warning("conds not on same device, skipping concat")
            return False
        return True

    def concat(self, others: Sequence[CONDRegular]) -> Any:
        return torch.cat([self.cond, *(o.cond for o in others)])

    def size(self) -> list[int]:
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    """Shaped like the noise: cut to the entry's ``area`` before batching."""

    def process_cond(self, batch_size: int, area: Sequence[int] | None = None, **kwargs: Any) -> CONDRegular:
        data = self.cond
        if area is not None:
            # area = (*sizes, *offsets) over the spatial dimensions.
            dims = len(area) // 2
            for i in range(dims):
                data = data.narrow(i + 2, area[i + dims], area[i])
        return self._copy_with(repeat_to_batch_size(data, batch_size))


class CONDCrossAttn(CONDRegular):
    """Cross-attention context ``[B, tokens, dim]``: contexts of different lengths join by
    repeating each up to the least common multiple of the lengths (at most 4x), which leaves
    attention's result unchanged."""

    def can_concat(self, other: CONDRegular) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return self._same_device(other)

    def concat(self, others: Sequence[CONDRegular]) -> Any:
        conds = [self.cond, *(o.cond for o in others)]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


class CONDConstant(CONDRegular):
    """Any value shared by the whole batch; only equal values share a call."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with(self.cond)

    def can_concat(self, other: CONDRegular) -> bool:
        return is_equal(self.cond, other.cond)

    def concat(self, others: Sequence[CONDRegular]) -> Any:
        return self.cond

    def size(self) -> list[int]:
        return [1]


class CONDList(CONDRegular):
    """A list of tensors, each batched along dim 0."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> CONDRegular:
        return self._copy_with([repeat_to_batch_size(c, batch_size) for c in self.cond])

    def can_concat(self, other: CONDRegular) -> bool:
        return len(self.cond) == len(other.cond) and all(
            a.shape == b.shape for a, b in zip(self.cond, other.cond, strict=True)
        )

    def concat(self, others: Sequence[CONDRegular]) -> Any:
        return [torch.cat([c, *(o.cond[i] for o in others)]) for i, c in enumerate(self.cond)]

    def size(self) -> list[int]:
        # A rough [1, width, elements / width] for memory estimates, as the reference gives.
        total = 0
        width = 1
        for c in self.cond:
            shape = c.size()
            total += math.prod(shape)
            if len(shape) > 1:
                width = shape[1]
        return [1, width, total // width]


__all__ = [
    "CONDConstant",
    "CONDCrossAttn",
    "CONDList",
    "CONDNoiseShape",
    "CONDRegular",
    "is_equal",
    "repeat_to_batch_size",
    "resize_to_batch_size",
]
