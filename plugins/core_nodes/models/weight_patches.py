"""Weight patches in the reference's formats: what ``ModelPatcher.add_patches`` stores and how they merge.

A MODEL's ``patches`` maps a state-dict key (``diffusion_model.<our parameter name>``) to a list of
``(strength_patch, value, strength_model, offset, function)`` entries, applied in order by
:func:`calculate_weight`. ``value`` is what packs and ``comfy.lora.load_lora`` produce:

* ``(tensor,)`` or ``("diff", (tensor, ...))``: a full difference, added at ``strength_patch``
  (``{"pad_weight": True}`` as the second item grows the weight to the difference's shape first);
* ``("set", (tensor,))``: the weight replaced;
* ``("model_as_lora", (target,))``: ``target - original``, the original taken from ``original_weights``;
* ``("lora", (up, down, alpha, mid, dora_scale, reshape))``, ``("loha", (w1a, w1b, alpha, w2a, w2b,
  t1, t2, dora_scale))``, ``("lokr", (w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora_scale))``:
  the low-rank kinds, merged through :class:`~plugins.core_nodes.models.lora.Delta` (so DoRA
  follows this server's reading, see ``lora.py``);
* a list ``[(weight, convert), *entries]`` (``get_key_patches`` of another model): the other
  model's weight with its own patches, used as a difference (model merging);
* a :class:`Delta`: a LoRA change this server read itself (``LoraLoader``).

``strength_model`` scales the weight before the change; ``offset`` ``(dim, start, length)`` applies
the entry to that slice only; ``function`` maps the change before it is added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .lora import Delta

log = logging.getLogger("comfykernel.core_nodes")

Entry = tuple[float, Any, float, Any, Any]


def _alpha_scale(alpha: Any, rank: int) -> float:
    return float(alpha) / rank if alpha is not None else 1.0


def delta_from_reference(kind: str, data: Sequence[Any]) -> Delta:
    """The :class:`Delta` of a reference ``("lora" | "loha" | "lokr", data)`` patch value."""
    if kind == "lora":
        up, down, alpha = data[0], data[1], data[2]
        mid = data[3] if len(data) > 3 else None
        dora = data[4] if len(data) > 4 else None
        scale = _alpha_scale(alpha, down.shape[0])
        if mid is not None:
            return Delta("lora_tucker", (up, mid, down), scale, dora_scale=dora)
        return Delta("lora", (up, down), scale, dora_scale=dora)
    if kind == "loha":
        w1a, w1b, alpha, w2a, w2b = data[:5]
        t1, t2 = (data[5], data[6]) if len(data) > 6 else (None, None)
        dora = data[7] if len(data) > 7 else None
        scale = _alpha_scale(alpha, w1b.shape[0])
        if t1 is not None and t2 is not None:
            return Delta("loha_tucker", (t1, w1a, w1b, t2, w2a, w2b), scale, dora_scale=dora)
        return Delta("loha", (w1a, w1b.flatten(1), w2a, w2b.flatten(1)), scale, dora_scale=dora)
    if kind == "lokr":
        w1, w2, alpha, w1_a, w1_b, w2_a, w2_b = data[:7]
        t2 = data[7] if len(data) > 7 else None
        dora = data[8] if len(data) > 8 else None
        left = (w1,) if w1 is not None else (w1_a, w1_b)
        if w2 is not None:
            right: tuple[torch.Tensor, ...] = (w2,)
        else:
            right = (w2_a, w2_b) if t2 is None else (t2, w2_a, w2_b)
        # The reference's rank: the decomposed side's, the right one's when both are.
        rank = w2_b.shape[0] if w2 is None else (w1_b.shape[0] if w1 is None else None)
        scale = _alpha_scale(alpha, rank) if rank is not None else 1.0
        return Delta("lokr", (*left, *right), scale, split=len(left), dora_scale=dora)
    raise ValueError(f"patch type {kind!r} is not supported by this server")


def reference_from_delta(delta: Delta) -> tuple[str, tuple[Any, ...]]:
    """The reference's patch value for a change this server read (what ``comfy.lora.load_lora`` returns)."""
    t = delta.tensors
    if delta.kind == "diff":
        return ("diff", (t[0],))
    if delta.kind in ("lora", "lora_tucker"):
        up, down = t[0], t[-1]
        mid = t[1] if delta.kind == "lora_tucker" else None
        return ("lora", (up, down, delta.scale * down.shape[0], mid, delta.dora_scale, None))
    if delta.kind in ("loha", "loha_tucker"):
        if delta.kind == "loha":
            w1a, w1b, w2a, w2b = t
            t1 = t2 = None
        else:
            t1, w1a, w1b, t2, w2a, w2b = t
        return ("loha", (w1a, w1b, delta.scale * w1b.shape[0], w2a, w2b, t1, t2, delta.dora_scale))
    if delta.kind == "lokr":
        left, right = t[: delta.split], t[delta.split :]
        w1, w1_a, w1_b = (left[0], None, None) if len(left) == 1 else (None, *left[-2:])
        w2, w2_a, w2_b = (right[0], None, None) if len(right) == 1 else (None, *right[-2:])
        core = right[0] if len(right) == 3 else None
        rank = w2_b.shape[0] if w2_b is not None else (w1_b.shape[0] if w1_b is not None else None)
        alpha = delta.scale * rank if rank is not None else None
        return ("lokr", (w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, core, delta.dora_scale))
    raise ValueError(f"unknown kind of change {delta.kind!r}")


def _pad_to(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) != weight.dim() or any(n < w for n, w in zip(shape, weight.shape, strict=True)):
        raise ValueError(f"cannot pad a weight of {tuple(weight.shape)} to {tuple(shape)}")
    out = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
    out[tuple(slice(0, n) for n in weight.shape)] = weight
    return out


def _nested(value: list[Any], weight: torch.Tensor, key: str, dtype: torch.dtype) -> torch.Tensor:
    """``[(base, convert), *entries]``: another model's weight with its own patches merged."""
    base, convert = value[0][0], value[0][1]
    other = base.to(device=weight.device, dtype=dtype, copy=True)
    other = convert(other, inplace=True) if convert is not None else other
    return calculate_weight(value[1:], other, key, intermediate_dtype=dtype)


def _apply_one(
    weight: torch.Tensor,
    strength: float,
    value: Any,
    key: str,
    function: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
    original_weights: Mapping[str, Any] | None,
) -> torch.Tensor:
    if isinstance(value, Delta):
        if function is _identity:
            return value.apply(weight, strength)
        return weight + function(strength * value.weight(weight.shape, weight.device))
    if isinstance(value, torch.Tensor):
        # The reference takes a bare tensor's first dimension as a patch type; one tensor can only
        # mean a difference, so it is read as ``(tensor,)``.
        value = (value,)
    if isinstance(value, list):
        value = (_nested(value, weight, key, dtype),)
    if len(value) == 1:
        kind, data = "diff", value
    else:
        kind, data = value[0], value[1]
    if kind == "diff":
        diff = data[0]
        pad = len(data) > 1 and isinstance(data[1], Mapping) and data[1].get("pad_weight")
        if pad and diff.shape != weight.shape:
            weight = _pad_to(weight, diff.shape)
        if strength == 0.0:
            return weight
        if diff.shape != weight.shape:
            log.warning("weight patch for %s not merged: shape %s != %s", key, tuple(diff.shape), tuple(weight.shape))
            return weight
        return weight + function(strength * diff.to(weight.device, weight.dtype))
    if kind == "set":
        return data[0].to(weight.device, weight.dtype).clone()
    if kind == "model_as_lora":
        if original_weights is None or key not in original_weights:
            raise ValueError(f"a model_as_lora patch for {key} needs the original weights")
        original = original_weights[key][0][0]
        change = data[0].to(weight.device, dtype) - original.to(weight.device, dtype)
        return weight + function(strength * change.to(weight.dtype))
    delta = delta_from_reference(kind, data)
    if function is _identity:
        return delta.apply(weight, strength)
    return weight + function(strength * delta.weight(weight.shape, weight.device))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def calculate_weight(
    patches: Sequence[Sequence[Any]],
    weight: torch.Tensor,
    key: str,
    intermediate_dtype: torch.dtype = torch.float32,
    original_weights: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``weight`` with every entry of ``patches`` applied in order (see the module docstring).

    ``weight`` should be a copy in ``intermediate_dtype``: as in the reference, an entry with an
    ``offset`` writes its slice into it; the merged weight is returned.
    """
    for entry in patches:
        strength, value = float(entry[0]), entry[1]
        strength_model = float(entry[2]) if len(entry) > 2 else 1.0
        offset = entry[3] if len(entry) > 3 else None
        function = entry[4] if len(entry) > 4 and entry[4] is not None else _identity
        target = weight.narrow(offset[0], offset[1], offset[2]) if offset is not None else weight
        if strength_model != 1.0:
            target = target * strength_model
        merged = _apply_one(target, strength, value, key, function, intermediate_dtype, original_weights)
        if offset is None:
            weight = merged
        else:
            weight.narrow(offset[0], offset[1], offset[2]).copy_(merged)
    return weight


def entry(value: Any, strength_patch: float = 1.0, strength_model: float = 1.0, offset: Any = None,
          function: Any = None) -> Entry:  # fmt: skip
    """One ``patches[key]`` entry in the reference's layout."""
    return (strength_patch, value, strength_model, offset, function)


def add_entries(
    target: dict[str, list[Entry]],
    known: set[str],
    patches: Mapping[Any, Any],
    strength_patch: float = 1.0,
    strength_model: float = 1.0,
) -> list[Any]:
    """Append ``patches`` (by state-dict key, or ``(key, offset[, function])``) to ``target`` as
    entries, leaving out keys not in ``known``; returns the keys kept. ``ModelPatcher.add_patches``
    and a hook's weight patches file them the same way."""
    added = []
    for k, value in patches.items():
        if isinstance(k, str):
            key, offset, function = k, None, None
        else:
            key, offset = k[0], k[1]
            function = k[2] if len(k) > 2 else None
        if key in known:
            added.append(k)
            target.setdefault(key, []).append(entry(value, strength_patch, strength_model, offset, function))
    return added


__all__ = ["Entry", "add_entries", "calculate_weight", "delta_from_reference", "entry", "reference_from_delta"]
