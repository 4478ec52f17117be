"""``comfy.conds``: wrappers for the extra inputs a model call gets, batched the reference's way.

Each wrapper knows how to fit its value to a batch (``process_cond``), whether it can share one
model call with another wrapper of its kind (``can_concat``) and how to join them (``concat``).
Packs build them in ``extra_conds`` overrides (IC-Light's ``CONDRegular(concat_latent)``,
AnimateDiff's ``CONDNoiseShape``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import comfy.utils
import torch

log = logging.getLogger("comfykernel.compat")


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
        return self._copy_with(comfy.utils.repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other: CONDRegular) -> bool:
        if self.cond.shape != other.cond.shape:
            return False
        if self.cond.device != other.cond.device:
            log.warning("conds not on same device, skipping concat")
            return False
        return True

    def concat(self, others: Sequence[CONDRegular]) -> Any:
        return torch.cat([self.cond, *(o.cond for o in others)])

    def size(self) -> list[int]:
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    """Shaped like the noise: cut to the conditioning's ``area`` before batching."""

    def process_cond(self, batch_size: int, area: Sequence[int] | None = None, **kwargs: Any) -> CONDRegular:
        data = self.cond
        if area is not None:
            # area = (*sizes, *offsets) over the spatial dimensions.
            dims = len(area) // 2
            for i in range(dims):
                data = data.narrow(i + 2, area[i + dims], area[i])
        return self._copy_with(comfy.utils.repeat_to_batch_size(data, batch_size))


class CONDCrossAttn(CONDRegular):
    """Cross-attention context ``[B, tokens, dim]``: contexts of different lengths join by
    repeating each up to the least common multiple of the lengths (at most 4x), which does not
    change attention's result."""

    def can_concat(self, other: CONDRegular) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        if self.cond.device != other.cond.device:
            log.warning("conds not on same device, skipping concat")
            return False
        return True

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
        return self._copy_with([comfy.utils.repeat_to_batch_size(c, batch_size) for c in self.cond])

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
