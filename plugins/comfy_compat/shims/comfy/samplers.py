"""``comfy.samplers``: the reference's sampler objects, guider and per-step guidance functions.

All are real module attributes that packs may replace; the core KSampler node reads
``sampling_function``, ``calc_cond_batch``, ``cfg_function``, ``get_area_and_mult``, ``sample``,
``sampler_object``, ``KSampler``, ``CFGGuider`` and ``calculate_sigmas`` from this module at each
call (through ``plugins.core_nodes.patchpoints``), so a replacement here changes what the node
does, as in ComfyUI. The conds those functions receive are the reference's processed cond dicts
(``plugins.core_nodes.cond_prep``), built by the core sampler itself: packs may read, copy and
rewrite them.

``SCHEDULER_HANDLERS``, ``SAMPLER_NAMES`` and the ``KSampler`` name lists are ordinary mutable
module-level containers because the reference's are and packs extend them;
``calculate_sigmas`` consults ``SCHEDULER_HANDLERS`` first.
"""

from __future__ import annotations

from typing import Any

import comfy.k_diffusion.sampling as k_diffusion_sampling

from plugins.core_nodes import sampler_objects as _objects
from plugins.core_nodes.cfg import (
    calc_cond_batch,
    can_concat_cond,
    cfg_function,
    cond_cat,
    cond_equal_size,
    finalize_default_conds,
    get_area_and_mult,
    sampling_function,
)
from plugins.core_nodes.cond_prep import (
    add_area_dims,
    apply_empty_x_to_equal_area,
    calculate_start_end_timesteps,
    create_cond_with_same_area_if_none,
    encode_model_conds,
    get_mask_aabb,
    pre_run_control,
    process_conds,
    resolve_areas_and_cond_masks_multidim,
)
from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.sampler_objects import (
    KSAMPLER,
    InpaintDenoiser,
    Sampler,
    SchedulerHandler,
    ksampler,
    sample,
    sampler_object,
)

__all__ = [
    "KSAMPLER",
    "KSAMPLER_NAMES",
    "SAMPLER_NAMES",
    "SCHEDULER_HANDLERS",
    "SCHEDULER_NAMES",
    "CFGGuider",
    "KSampler",
    "KSamplerX0Inpaint",
    "Sampler",
    "SchedulerHandler",
    "add_area_dims",
    "apply_empty_x_to_equal_area",
    "calc_cond_batch",
    "calc_cond_uncond_batch",
    "calculate_sigmas",
    "calculate_start_end_timesteps",
    "can_concat_cond",
    "cast_transformer_options",
    "cfg_function",
    "cond_cat",
    "cond_equal_size",
    "create_cond_with_same_area_if_none",
    "encode_model_conds",
    "finalize_default_conds",
    "get_area_and_mult",
    "get_mask_aabb",
    "k_diffusion_sampling",
    "ksampler",
    "pre_run_control",
    "process_conds",
    "resolve_areas_and_cond_masks",
    "resolve_areas_and_cond_masks_multidim",
    "sample",
    "sampler_object",
    "sampling_function",
]

KSamplerX0Inpaint = InpaintDenoiser
# Fresh lists for each installation of the shims, so what a pack appends stays with this server.
KSAMPLER_NAMES: list[str] = list(_objects.KSAMPLER_NAMES)
SAMPLER_NAMES: list[str] = KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES: list[str] = list(_objects.SCHEDULER_NAMES)
SCHEDULER_HANDLERS: dict[str, SchedulerHandler] = _objects.scheduler_handlers()


class KSampler(_objects.KSampler):
    __doc__ = _objects.KSampler.__doc__
    SAMPLERS: list[str] = SAMPLER_NAMES
    SCHEDULERS: list[str] = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS: set[str] = set(_objects.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS)


def calc_cond_uncond_batch(model: Any, cond: Any, uncond: Any, x_in: Any, timestep: Any, model_options: Any) -> Any:
    """The deprecated two-prompt form of ``calc_cond_batch``: ``(cond_pred, uncond_pred)``."""
    return tuple(calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options))


def resolve_areas_and_cond_masks(conditions: Any, h: int, w: int, device: Any) -> None:
    """The deprecated 2-D form of ``resolve_areas_and_cond_masks_multidim``."""
    resolve_areas_and_cond_masks_multidim(conditions, [h, w], device)


def calculate_sigmas(model_sampling: Any, scheduler_name: str, steps: int) -> Any:
    """``steps`` + 1 sigmas ending in 0 for ``scheduler_name`` (a ``SCHEDULER_HANDLERS`` entry)."""
    return _objects.calculate_sigmas(model_sampling, scheduler_name, steps, SCHEDULER_HANDLERS)


def cast_transformer_options(
    transformer_options: dict[str, Any], device: Any = None, dtype: Any = None
) -> None:
    """Call ``.to(device)`` / ``.to(dtype)`` on the patch objects in ``transformer_options``
    that have one (``patches`` lists and ``patches_replace`` entries), in place."""
    casts = [c for c in (device, dtype) if c is not None]
    if not casts:
        return
    for patches in transformer_options.get("patches", {}).values():
        for i, patch in enumerate(patches):
            for cast in casts:
                if hasattr(patch, "to"):
                    patch = patch.to(cast)
            patches[i] = patch
    for replacements in transformer_options.get("patches_replace", {}).values():
        for key, patch in list(replacements.items()):
            for cast in casts:
                if hasattr(patch, "to"):
                    patch = patch.to(cast)
            replacements[key] = patch
