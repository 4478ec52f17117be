"""The reference's cond-dict helpers (``comfy.samplers.get_area_and_mult`` / ``process_conds``).

The core sampler places conditioning itself (``plugins.core_nodes.guidance``) and never builds
the reference's per-cond dicts, so nothing here is on the sampling path. Packs import these
functions and call them on cond dicts of their own (ComfyUI_smZNodes wraps
``get_area_and_mult``; comfyui-tooling-nodes runs ``process_conds`` to read the encoded
cross-attention of regional prompts), so they follow the reference's dict layout: the output of
``comfy.sampler_helpers.convert_cond`` (each entry's options plus ``cross_attn``,
``model_conds`` and ``uuid``), and after ``process_conds`` the ``model_conds`` hold
``comfy.conds`` objects.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Sequence
from typing import Any

# What get_area_and_mult returns for one active cond (the reference's field names and order).
CondObj = collections.namedtuple(
    "CondObj", ["input_x", "mult", "conditioning", "area", "control", "patches", "uuid", "hooks"]
)
# An area's inner borders fade over at most this many latent pixels (a quarter of a short side).
_FADE = 8


def get_area_and_mult(conds: dict[str, Any], x_in: Any, timestep_in: Any) -> CondObj | None:
    """The part of ``x_in`` a cond dict applies to, its weight, and its processed model inputs.

    None when ``timestep_in`` lies outside the cond's ``timestep_start`` / ``timestep_end``
    (sigmas: start is the larger). ``area`` is ``[h, w, y, x]`` (or the n-dimensional form);
    without a mask, the area's borders that lie inside the latent fade in linearly.
    """
    import torch

    level = float(timestep_in.reshape(-1)[0]) if hasattr(timestep_in, "reshape") else float(timestep_in)
    if "timestep_start" in conds and level > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and level < conds["timestep_end"]:
        return None
    dims = tuple(x_in.shape[2:])
    n = len(dims)
    area = list(conds["area"]) if "area" in conds else None
    input_x = x_in
    if area is not None:
        for i in range(n):
            # An area reaching past the latent is cut at its edge.
            area[i] = min(x_in.shape[i + 2] - area[n + i], area[i])
            input_x = input_x.narrow(i + 2, area[n + i], area[i])
    if "mask" in conds:
        mask = conds["mask"][: input_x.shape[0]]
        if area is not None:
            for i in range(n):
                mask = mask.narrow(i + 1, area[n + i], area[i])
        mask = mask * float(conds.get("mask_strength", 1.0))
        repeats = [input_x.shape[0] // mask.shape[0], input_x.shape[1]] + [1] * n
        mask = mask.unsqueeze(1).repeat(*repeats)
    else:
        mask = torch.ones_like(input_x)
    mult = mask * float(conds.get("strength", 1.0))
    if "mask" not in conds and area is not None:
        for i in range(n):
            steps = min(_FADE, mult.shape[i + 2] // 4)
            for t in range(steps):
                factor = (t + 1) / steps
                if area[n + i] != 0:  # the border is inside the latent: fade it in
                    mult.narrow(i + 2, t, 1).mul_(factor)
                if area[i] + area[n + i] < x_in.shape[i + 2]:
                    mult.narrow(i + 2, area[i] - 1 - t, 1).mul_(factor)
    conditioning = {
        name: value.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
        for name, value in conds.get("model_conds", {}).items()
    }
    return CondObj(
        input_x,
        mult,
        conditioning,
        area,
        conds.get("control"),
        None,
        conds.get("uuid"),
        conds.get("hooks"),
    )


def _resolve_area(cond: dict[str, Any], dims: Sequence[int]) -> None:
    area = cond.get("area")
    if area is not None and area[0] == "percentage":
        # ("percentage", h, w, y, x) -> latent pixels, at least one pixel.
        n = len(dims)
        sizes = [max(1, round(area[1 + i] * dims[i])) for i in range(n)]
        offsets = [round(area[1 + n + i] * dims[i]) for i in range(n)]
        cond["area"] = sizes + offsets
    mask = cond.get("mask")
    if mask is None:
        return
    import torch

    if mask.ndim == len(dims):
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != tuple(dims):
        mode = "bilinear" if len(dims) == 2 else "trilinear"
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=tuple(dims), mode=mode).squeeze(1)
    if cond.get("set_area_to_bounds"):
        nonzero = (mask > 0).any(dim=0)
        if nonzero.any():
            bounds = [
                torch.nonzero(nonzero.any(dim=tuple(j for j in range(len(dims)) if j != i)))
                for i in range(len(dims))
            ]
            lows = [int(b.min()) for b in bounds]
            highs = [int(b.max()) + 1 for b in bounds]
            cond["area"] = [h - lo for lo, h in zip(lows, highs, strict=True)] + lows
    cond["mask"] = mask


def _timestep_range(model: Any, cond: dict[str, Any]) -> None:
    sampling = getattr(model, "model_sampling", None)
    if sampling is None or not hasattr(sampling, "percent_to_sigma"):
        return
    for key, out in (("start_percent", "timestep_start"), ("end_percent", "timestep_end")):
        if key in cond:
            cond[out] = sampling.percent_to_sigma(cond[key])


def _model_conds(model: Any, cond: dict[str, Any], noise: Any, device: Any, **extra: Any) -> None:
    from comfy.conds import CONDCrossAttn, CONDRegular

    model_conds = dict(cond.get("model_conds", {}))
    extra_conds = getattr(model, "extra_conds", None)
    if callable(extra_conds):
        params = dict(cond)
        params.update(noise=noise, device=device, **extra)
        model_conds.update(extra_conds(**params))
    elif cond.get("cross_attn") is not None:
        # Models without extra_conds (ours): the encoded text is the cross-attention input and
        # the pooled output feeds SDXL's ADM vector.
        model_conds.setdefault("c_crossattn", CONDCrossAttn(cond["cross_attn"]))
        if cond.get("pooled_output") is not None:
            model_conds.setdefault("pooled_output", CONDRegular(cond["pooled_output"]))
    cond["model_conds"] = model_conds


def process_conds(
    model: Any,
    noise: Any,
    conds: dict[str, list[dict[str, Any]]],
    device: Any,
    latent_image: Any = None,
    denoise_mask: Any = None,
    seed: int | None = None,
    latent_shapes: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cond dicts ready for sampling: areas in latent pixels, masks at the latent's size,
    sigma ranges from the percents, and ``model_conds`` built. New lists and dicts are returned;
    the caller's are not changed."""
    dims = tuple(noise.shape[2:])
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entries in conds.items():
        processed = []
        for entry in entries:
            cond = dict(entry)
            cond.setdefault("uuid", uuid.uuid4())
            _resolve_area(cond, dims)
            _timestep_range(model, cond)
            _model_conds(
                model,
                cond,
                noise,
                device,
                latent_image=latent_image,
                denoise_mask=denoise_mask,
                seed=seed,
                latent_shapes=latent_shapes,
            )
            processed.append(cond)
        out[name] = processed
    return out


__all__ = ["CondObj", "get_area_and_mult", "process_conds"]
