"""``node_helpers``: small helpers the reference's nodes share and packs import."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import ImageFile, UnidentifiedImageError

log = logging.getLogger("comfykernel.compat")


def conditioning_set_values(
    conditioning: Sequence[Sequence[Any]], values: Mapping[str, Any] | None = None, append: bool = False
) -> list[list[Any]]:
    """A copy of ``conditioning`` with ``values`` set in each entry's options dict.

    With ``append``, a value whose key is already set (not None) is added to the old value
    (``old + new``: lists extend, tensors add) instead of replacing it.
    """
    out = []
    for entry in conditioning:
        options = dict(entry[1])
        for key, value in (values or {}).items():
            old = options.get(key)
            options[key] = old + value if append and old is not None else value
        out.append([entry[0], options])
    return out


def conditioning_set_values_with_timestep_range(
    conditioning: Sequence[Sequence[Any]],
    values: Mapping[str, Any] | None = None,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
) -> list[Any]:
    """Apply ``values`` only while sampling is within ``[start_percent, end_percent]``.

    Each entry is split into up to three entries: before the range (unchanged), inside it (with
    ``values``) and after it (unchanged), each within the entry's own percent range.
    """
    if start_percent > end_percent:
        log.warning("start_percent (%s) must be <= end_percent (%s)", start_percent, end_percent)
        return list(conditioning)
    # The sampler's percent gates are strict comparisons; a small gap keeps one part active.
    eps = 1e-5
    out: list[Any] = []
    for entry in conditioning:
        own_start = entry[1].get("start_percent", 0.0)
        own_end = entry[1].get("end_percent", 1.0)
        lo, hi = max(start_percent, own_start), min(end_percent, own_end)
        if lo >= hi:
            out.append(entry)
            continue
        if lo > own_start:
            out += conditioning_set_values([entry], {"start_percent": own_start, "end_percent": lo - eps})
        out += conditioning_set_values([entry], {**(values or {}), "start_percent": lo, "end_percent": hi})
        if hi < own_end:
            out += conditioning_set_values([entry], {"start_percent": hi + eps, "end_percent": own_end})
    return out


def pillow(fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)``, retried once with truncated images allowed when PIL cannot read the file."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    """The hash constructor for file hashes: sha256 (the reference's default)."""
    return hashlib.sha256


def string_to_torch_dtype(string: str) -> torch.dtype | None:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match ``source``'s channel count to ``destination``'s: drop alpha, or add an opaque one."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1))
        source[..., -1] = 1.0
    return destination, source
