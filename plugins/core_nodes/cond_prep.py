"""CONDITIONING lists made ready for sampling: the reference's processed cond dicts.

A CONDITIONING value is a list of ``[cross_attn, options]`` pairs. :func:`convert_cond` makes
each a plain dict (the options, ``cross_attn``, ``model_conds`` and a ``uuid``);
:func:`process_conds` then, on the latent being sampled, resolves percentage areas to latent
pixels and masks to the latent's size (``set_area_to_bounds`` narrows the area to the mask),
turns ``start_percent`` / ``end_percent`` into ``timestep_start`` / ``timestep_end`` sigmas,
fills ``model_conds`` with the model's ``extra_conds`` (through the MODEL's object patches, so a
pack's replacement is used), gives every area entry of one prompt a counterpart of the same
area in the other prompts, and gets ControlNets ready (``pre_run``). Dicts are copied before
any change, so the caller's stay as they were.

The names, argument orders and dict keys are the reference's (``comfy.samplers`` /
``comfy.sampler_helpers``): packs call these functions and read and rewrite the dicts
(AnimateDiff-Evolved copies them per context window, ComfyUI_smZNodes reads ``cond["weight"]``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from typing import Any

import torch

CondDict = dict[str, Any]


def convert_cond(cond: Iterable[Sequence[Any]]) -> list[CondDict]:
    """A CONDITIONING list as cond dicts: each entry's options, its tensor as ``cross_attn``,
    ``model_conds`` (kept when present) and a fresh ``uuid``."""
    out = []
    for entry in cond:
        converted = dict(entry[1])
        model_conds = converted.get("model_conds", {})
        if entry[0] is not None:
            converted["cross_attn"] = entry[0]
        converted["model_conds"] = model_conds
        converted["uuid"] = uuid.uuid4()
        out.append(converted)
    return out


def add_area_dims(area: Sequence[Any], num_dims: int) -> list[Any]:
    """``area`` (sizes then offsets) widened to ``num_dims`` dimensions: each added leading
    dimension is unbounded (a huge size at offset 0)."""
    area = list(area)
    while len(area) // 2 < num_dims:
        half = len(area) // 2
        area = [2147483648, *area[:half], 0, *area[half:]]
    return area


def get_mask_aabb(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mask ``[B, H, W]``: its non-zero bounding box ``(x0, y0, x1, y1)`` (inclusive) and
    whether it is empty."""
    count = masks.shape[0]
    boxes = torch.zeros((count, 4), device=masks.device, dtype=torch.int)
    empty = torch.zeros(count, device=masks.device, dtype=torch.bool)
    for i in range(count):
        mask = masks[i]
        if mask.numel() == 0:
            continue
        if not bool((mask != 0).any()):
            empty[i] = True
            continue
        y, x = torch.where(mask)
        boxes[i] = torch.stack([x.min(), y.min(), x.max(), y.max()]).to(torch.int)
    return boxes, empty


def resolve_areas_and_cond_masks_multidim(
    conditions: MutableSequence[CondDict], dims: Sequence[int], device: Any
) -> None:
    """In place over the list (each changed dict is a copy): percentage areas in latent pixels
    (at least one pixel), masks at the latent's size on ``device``, and ``set_area_to_bounds``
    areas shrunk to the mask's bounding box (at least 8 latent pixels a side)."""
    dims = tuple(int(d) for d in dims)
    for i, c in enumerate(conditions):
        area = c.get("area")
        if area is not None and area[0] == "percentage":
            a = area[1:]
            half = len(a) // 2
            sizes = tuple(max(1, round(a[d] * dims[d])) for d in range(len(dims)))
            offsets = tuple(round(a[d + half] * dims[d]) for d in range(len(dims)))
            c = {**c, "area": sizes + offsets}
            conditions[i] = c
        if "mask" not in c:
            continue
        mask = c["mask"].to(device=device)
        modified = dict(c)
        if mask.ndim == len(dims):
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != dims:
            size = (dims[-2], dims[-1])
            if mask.ndim < 4:
                mask = torch.nn.functional.interpolate(mask.unsqueeze(1).float(), size=size, mode="bilinear").squeeze(1)
            else:
                mask = torch.nn.functional.interpolate(mask.float(), size=size, mode="bilinear")
        if modified.get("set_area_to_bounds", False):
            bounds = torch.max(torch.abs(mask), dim=0).values.unsqueeze(0)
            boxes, empty = get_mask_aabb(bounds)
            if bool(empty[0]):
                # An all-zero mask weighs nothing: the smallest area keeps the call cheap.
                modified["area"] = (8, 8, 0, 0)
            else:
                x0, y0, x1, y1 = (int(v) for v in boxes[0])
                modified["area"] = (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)
        modified["mask"] = mask
        conditions[i] = modified


def calculate_start_end_timesteps(model: Any, conds: MutableSequence[CondDict]) -> None:
    """``start_percent`` / ``end_percent`` (and a CLIP schedule's ``clip_*_percent``) as
    ``timestep_start`` / ``timestep_end`` sigmas of the model's schedule, on copies."""
    sampling = model.model_sampling
    for t, x in enumerate(conds):
        start = end = None
        if "clip_start_percent" in x:
            start = sampling.percent_to_sigma(max(x["clip_start_percent"], x.get("start_percent", 0.0)))
            end = sampling.percent_to_sigma(min(x["clip_end_percent"], x.get("end_percent", 1.0)))
        else:
            if "start_percent" in x:
                start = sampling.percent_to_sigma(x["start_percent"])
            if "end_percent" in x:
                end = sampling.percent_to_sigma(x["end_percent"])
        if start is not None or end is not None:
            n = dict(x)
            if start is not None:
                n["timestep_start"] = start
            if end is not None:
                n["timestep_end"] = end
            conds[t] = n


def encode_model_conds(
    model_function: Callable[..., Mapping[str, Any]],
    conds: MutableSequence[CondDict],
    noise: torch.Tensor,
    device: Any,
    prompt_type: str,
    **kwargs: Any,
) -> MutableSequence[CondDict]:
    """Each entry's ``model_conds`` updated with ``model_function(**entry, noise=, device=,
    width=, height=, prompt_type=, **kwargs)`` (the entry's own values win; width / height
    default to the latent's size times 8)."""
    for t, x in enumerate(conds):
        params = dict(x)
        params["device"] = device
        params["noise"] = noise
        default_width = noise.shape[3] * 8 if noise.ndim >= 4 else None
        params["width"] = params.get("width", default_width)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for key, value in kwargs.items():
            params.setdefault(key, value)
        out = model_function(**params)
        x = dict(x)
        x["model_conds"] = {**x["model_conds"], **out}
        conds[t] = x
    return conds


def _area_inside(a: Sequence[Any], outer: Sequence[Any]) -> bool:
    a = add_area_dims(a, len(outer) // 2)
    outer = add_area_dims(outer, len(a) // 2)
    n = min(len(a) // 2, len(outer) // 2)
    la, lo = len(a) // 2, len(outer) // 2
    for i in range(n):
        if a[la + i] < outer[lo + i]:
            return False
    return all(a[i] + a[la + i] <= outer[i] + outer[lo + i] for i in range(n))


def create_cond_with_same_area_if_none(conds: list[CondDict], c: CondDict) -> None:
    """Give ``conds`` (another prompt) an entry with ``c``'s area, unless one has it already: a
    copy of ``c`` carrying the ``model_conds`` of the smallest of ``conds`` that covers the
    area (an entry without area covers everything), so CFG compares like with like there."""
    if "area" not in c:
        return
    c_area = c["area"]
    smallest = None
    for x in conds:
        if "area" in x:
            a = x["area"]
            if _area_inside(c_area, a):
                if smallest is None or "area" not in smallest:
                    smallest = x
                elif math.prod(smallest["area"][: len(smallest["area"]) // 2]) > math.prod(a[: len(a) // 2]):
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None:
        return
    if "area" in smallest and smallest["area"] == c_area:
        return
    out = dict(c)
    out["model_conds"] = dict(smallest["model_conds"])
    conds.append(out)


def pre_run_control(model: Any, conds: Sequence[CondDict]) -> None:
    """Each entry's ControlNet chain learns the model's schedule (percents -> sigmas)."""
    sampling = model.model_sampling
    for x in conds:
        if "control" in x:
            x["control"].pre_run(model, lambda a: sampling.percent_to_sigma(a))


def apply_empty_x_to_equal_area(
    conds: Sequence[CondDict],
    uncond: list[CondDict],
    name: str,
    uncond_fill_func: Callable[[list[Any], int], Any],
) -> None:
    """When the whole-latent entries of ``conds`` carry ``name`` (a ControlNet to apply to the
    negative too, GLIGEN) and no whole-latent entry of ``uncond`` does, give them to ``uncond``."""
    cond_cnets = [x[name] for x in conds if "area" not in x and x.get(name) is not None]
    uncond_cnets = [x[name] for x in uncond if "area" not in x and x.get(name) is not None]
    uncond_other = [(x, t) for t, x in enumerate(uncond) if "area" not in x and x.get(name) is None]
    if uncond_cnets or not uncond_other:
        return
    for i in range(len(cond_cnets)):
        o, index = uncond_other[i % len(uncond_other)]
        n = dict(o)
        n[name] = uncond_fill_func(cond_cnets, i)
        if o.get(name) is not None:
            uncond.append(n)
        else:
            uncond[index] = n


def _plain_extra_conds(**kwargs: Any) -> dict[str, Any]:
    """The model conds of a model without ``extra_conds`` (a stand-in model): its text only."""
    from plugins.core_nodes.models.model_base import text_conds

    return text_conds(kwargs)


def process_conds(
    model: Any,
    noise: torch.Tensor,
    conds: dict[str, list[CondDict]],
    device: Any,
    latent_image: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
    seed: int | None = None,
    latent_shapes: Any = None,
) -> dict[str, list[CondDict]]:
    """``conds`` (prompt name -> cond dicts) ready for :func:`plugins.core_nodes.cfg.calc_cond_batch`
    on ``noise``'s shape (see the module docstring). ``model`` is the sampler's model view
    (``model_sampling``, ``extra_conds``); the lists of ``conds`` are replaced, not changed."""
    for k in conds:
        conds[k] = list(conds[k])
        resolve_areas_and_cond_masks_multidim(conds[k], noise.shape[2:], device)
    for k in conds:
        calculate_start_end_timesteps(model, conds[k])
    extra = getattr(model, "extra_conds", None)
    extra_conds = extra if callable(extra) else _plain_extra_conds
    for k in conds:
        conds[k] = list(
            encode_model_conds(
                extra_conds,
                conds[k],
                noise,
                device,
                k,
                latent_image=latent_image,
                denoise_mask=denoise_mask,
                seed=seed,
                latent_shapes=latent_shapes,
            )
        )
    # Every area entry of one prompt gets a counterpart of the same area in the others.
    for k in conds:
        for c in conds[k]:
            for kk in conds:
                if k != kk:
                    create_cond_with_same_area_if_none(conds[kk], c)
    for k in conds:
        pre_run_control(model, conds[k])
    if "positive" in conds:
        positive = conds["positive"]
        to_uncond = [c for c in positive if c.get("control_apply_to_uncond", False)]
        for k in conds:
            if k != "positive":
                apply_empty_x_to_equal_area(to_uncond, conds[k], "control", lambda cnets, x: cnets[x])
                apply_empty_x_to_equal_area(positive, conds[k], "gligen", lambda cnets, x: cnets[x])
    return conds


def controls_of(conds: Mapping[str, Sequence[CondDict] | None]) -> list[Any]:
    """The distinct ControlNet chains of the cond dicts (one shared by entries once)."""
    seen: dict[int, Any] = {}
    for entries in conds.values():
        for cond in entries or ():
            control = cond.get("control")
            if control is not None:
                seen.setdefault(id(control), control)
    return list(seen.values())


__all__ = [
    "CondDict",
    "add_area_dims",
    "apply_empty_x_to_equal_area",
    "calculate_start_end_timesteps",
    "controls_of",
    "convert_cond",
    "create_cond_with_same_area_if_none",
    "encode_model_conds",
    "get_mask_aabb",
    "pre_run_control",
    "process_conds",
    "resolve_areas_and_cond_masks_multidim",
]
