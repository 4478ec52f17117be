"""The reference's per-step guidance functions, with its names, signatures and argument dicts.

Custom-node packs call and replace these under ``comfy.samplers`` (``sampling_function``,
``calc_cond_batch``, ``cfg_function``, ``get_area_and_mult``) and hook into them through a
MODEL's ``model_options`` (``sampler_cfg_function``, ``sampler_pre_cfg_function``,
``sampler_post_cfg_function``, ``sampler_calc_cond_batch_function``, ``model_function_wrapper``,
``disable_cfg1_optimization``), so the guider (:mod:`plugins.core_nodes.guidance`) runs every
model evaluation through them.

The conds are the reference's processed cond dicts (:mod:`plugins.core_nodes.cond_prep`). For
each evaluation, :func:`get_area_and_mult` cuts every active entry's region out of the latent
and weighs it: ``strength`` times its mask (times ``mask_strength``), or, without a mask, with
the area's borders inside the latent faded in linearly over ``min(8, side // 4)`` latent
pixels (weights ``(t + 1) / rr`` from the border inwards). Entries whose regions have the same
shape and whose model conds :meth:`~plugins.core_nodes.conds.CONDRegular.can_concat` share one
model call (cond and uncond batched together, as much as memory allows); each output is added,
times its weight, into its prompt's prediction, which is divided by the summed weights.

The ``model`` argument is a :class:`ModelView`: the reference's ``BaseModel`` as these
functions use it, ``apply_model(x, t, c_concat=None, c_crossattn=None, control=None,
transformer_options={}, **kwargs)`` returning the denoised latent, ``extra_conds`` through the
MODEL's object patches.
"""

from __future__ import annotations

import collections
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from plugins.core_nodes.hooks.sampling import apply_group, prepare_keyframes
from plugins.core_nodes.patchpoints import lookup

# The reference's indices in ``conds`` and values in ``cond_or_uncond``.
COND = 0
UNCOND = 1
# Starting weight of every pixel, so a region no entry covers divides to 0 instead of NaN.
_EMPTY_COUNT = 1e-37
# An area's borders inside the latent fade in over at most this many latent pixels.
AREA_FADE = 8


class CondObj(NamedTuple):
    """One active cond entry on one evaluation (the reference's ``cond_obj`` fields)."""

    input_x: torch.Tensor
    mult: torch.Tensor
    conditioning: dict[str, Any]
    area: list[int] | None
    control: Any
    patches: dict[str, Any] | None
    uuid: Any
    hooks: Any


def _accepts_transformer_options(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "transformer_options" or p.kind is p.VAR_KEYWORD for p in params)


class ModelView:
    """A MODEL as the reference's ``BaseModel`` (``model.model``) looks to sampling functions.

    ``apply_model`` runs the MODEL's denoiser; ``current_patcher`` is the MODEL itself (the
    reference's back-reference); any other attribute is the MODEL's object patch of that name
    (the reference writes those onto its model for the run: IC-Light's ``extra_conds``), else
    read from the MODEL's ``model`` (``model_sampling``, ``latent_format``,
    ``diffusion_model``...) or the MODEL. A stand-in model without ``extra_conds`` gets its
    text as ``c_crossattn`` and nothing else.
    """

    def __init__(self, patcher: Any) -> None:
        self.current_patcher = patcher
        # Models without the keyword (test doubles, older adapters) are called without it.
        self._takes_options = _accepts_transformer_options(patcher)

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The denoised prediction for ``x`` at sigmas ``t`` (the reference passes sigma here)."""
        cond: dict[str, Any] = {"c_crossattn": c_crossattn, **kwargs}
        if c_concat is not None:
            cond["c_concat"] = c_concat
        if control is not None:
            cond["control"] = control
        if self._takes_options:
            options = _without_registered(dict(transformer_options or {}), self.current_patcher)
            return self.current_patcher(x, t, cond, transformer_options=options)
        return self.current_patcher(x, t, cond)

    @property
    def model_sampling(self) -> Any:
        """The MODEL's schedule, a pack's ``add_object_patch("model_sampling", ...)`` first (the
        reference patches it onto its BaseModel for the run; here it is read through the MODEL)."""
        get = getattr(self.current_patcher, "get_model_object", None)
        if callable(get):
            return get("model_sampling")
        return self._part("model_sampling")

    @property
    def latent_format(self) -> Any:
        return self._part("latent_format")

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    @property
    def extra_conds(self) -> Callable[..., dict[str, Any]]:
        try:
            return self._part("extra_conds")
        except AttributeError:
            from plugins.core_nodes.models.model_base import text_conds

            return lambda **kwargs: text_conds(kwargs)

    def _part(self, name: str) -> Any:
        patches = getattr(self.current_patcher, "object_patches", None)
        if isinstance(patches, Mapping) and name in patches:
            return patches[name]
        inner = getattr(self.current_patcher, "model", None)
        if inner is not None and hasattr(inner, name):
            return getattr(inner, name)
        return getattr(self.current_patcher, name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("current_patcher", "_takes_options"):
            raise AttributeError(name)
        return self._part(name)


def _without_registered(options: dict[str, Any], patcher: Any) -> dict[str, Any]:
    """``options`` less the wrappers the MODEL registered itself: the guider copied them in (as
    the reference does, so wrapper lookups on ``model_options`` find them) and the MODEL adds
    its own again when called, which must not run them twice."""
    registry = getattr(patcher, "wrappers", None)
    copied = options.get("wrappers")
    if not isinstance(registry, dict) or not isinstance(copied, dict) or not registry:
        return options
    own = {id(fn) for keyed in registry.values() for fns in keyed.values() for fn in fns}
    kept: dict[str, Any] = {}
    for kind, keyed in copied.items():
        left = {key: [fn for fn in fns if id(fn) not in own] for key, fns in keyed.items()}
        left = {key: fns for key, fns in left.items() if fns}
        if left:
            kept[kind] = left
    options = dict(options)
    options["wrappers"] = kept
    return options


def get_area_and_mult(conds: Mapping[str, Any], x_in: torch.Tensor, timestep_in: torch.Tensor) -> CondObj | None:
    """The region of ``x_in`` a cond dict applies to, its weight and its model conds fitted to
    the batch; None when sigma ``timestep_in`` is outside ``timestep_start`` /
    ``timestep_end`` (start is the larger sigma) or the area lies outside the latent.

    ``area`` is sizes then offsets (``[h, w, y, x]`` for images). The weight is ``strength``
    times the mask (times ``mask_strength``); without a mask, each border of the area that lies
    inside the latent fades in over ``rr = min(8, side // 4)`` latent pixels, the ``t``-th
    pixel from it weighted ``(t + 1) / rr``.
    """
    dims = tuple(x_in.shape[2:])
    n = len(dims)
    level = float(timestep_in.reshape(-1)[0])
    if "timestep_start" in conds and level > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and level < conds["timestep_end"]:
        return None
    area = None
    if "area" in conds:
        from plugins.core_nodes.cond_prep import add_area_dims

        area = add_area_dims(conds["area"], n)
        if len(area) // 2 > n:
            area = area[:n] + area[len(area) // 2 : len(area) // 2 + n]
    strength = conds.get("strength", 1.0)
    input_x = x_in
    if area is not None:
        for i in range(n):
            area[i] = min(x_in.shape[i + 2] - area[n + i], area[i])
            if area[i] <= 0 or area[n + i] < 0:
                return None  # nothing of the latent is inside this area
            input_x = input_x.narrow(i + 2, area[n + i], area[i])
    if "mask" in conds:
        mask = conds["mask"][: input_x.shape[0]]
        if area is not None:
            for i in range(n):
                mask = mask.narrow(i + 1, area[n + i], area[i])
        mask = mask * conds.get("mask_strength", 1.0)
        mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1]) + (1,) * (mask.ndim - 1))
        mult = mask.to(input_x) * strength
    else:
        mult = torch.ones_like(input_x) * strength
    if "mask" not in conds and area is not None:
        for i in range(n):
            rr = min(AREA_FADE, mult.shape[i + 2] // 4)
            for t in range(rr):
                factor = (t + 1) / rr
                if area[n + i] != 0:
                    mult.narrow(i + 2, t, 1).mul_(factor)
                if area[i] + area[n + i] < x_in.shape[i + 2]:
                    mult.narrow(i + 2, area[i] - 1 - t, 1).mul_(factor)
    conditioning = {
        name: value.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
        for name, value in conds["model_conds"].items()
    }
    patches = None
    gligen = conds.get("gligen")
    if gligen is not None:
        kind, gligen_model = gligen[0], gligen[1]
        if kind == "position":
            patch = gligen_model.model.set_position(input_x.shape, gligen[2], input_x.device)
        else:
            patch = gligen_model.model.set_empty(input_x.shape, input_x.device)
        patches = {"middle_patch": [patch]}
    return CondObj(
        input_x, mult, conditioning, area, conds.get("control"), patches, conds.get("uuid"), conds.get("hooks")
    )


def cond_equal_size(c1: Mapping[str, Any], c2: Mapping[str, Any]) -> bool:
    """Whether two entries' model conds can share a call (same keys, each concatenable)."""
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1: CondObj, c2: CondObj) -> bool:
    """Whether two active entries can be one batch: same region shape, the same control and
    patch objects, concatenable model conds."""
    if c1.input_x.shape != c2.input_x.shape:
        return False
    for a, b in ((c1.control, c2.control), (c1.patches, c2.patches)):
        if (a is None) != (b is None) or (a is not None and a is not b):
            return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list: Sequence[Mapping[str, Any]], device: Any = None) -> dict[str, Any]:
    """The model-call keywords of several entries' model conds, joined per key."""
    grouped: dict[str, list[Any]] = {}
    for c in c_list:
        for k, v in c.items():
            grouped.setdefault(k, []).append(v)
    out: dict[str, Any] = {}
    for k, values in grouped.items():
        out[k] = values[0].concat(values[1:])
        if device is not None and hasattr(out[k], "to"):
            out[k] = out[k].to(device)
    return out


def finalize_default_conds(
    model: Any,
    hooked_to_run: dict[Any, list[tuple[CondObj, int]]],
    default_conds: Sequence[Sequence[Mapping[str, Any]]],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> None:
    """Add each prompt's ``default`` entries where its other entries leave weight unused:
    their weight is 1 minus what the others put there (never below 0)."""
    area_and_mult = lookup("comfy.samplers", "get_area_and_mult", get_area_and_mult)
    default_mults = [torch.ones_like(x_in) for _ in default_conds]
    for to_run in hooked_to_run.values():
        for cond_obj, i in to_run:
            if not default_conds[i]:
                continue
            area = cond_obj.area
            if area is None:
                default_mults[i] -= cond_obj.mult
                continue
            region = default_mults[i]
            dims = len(area) // 2
            for d in range(dims):
                region = region.narrow(d + 2, area[d + dims], area[d])
            region -= cond_obj.mult
    for i, mult in enumerate(default_mults):
        if not default_conds[i]:
            continue
        torch.nn.functional.relu(mult, inplace=True)
        if torch.max(mult) == 0.0:
            continue
        for x in default_conds[i]:
            p = area_and_mult(x, x_in, timestep)
            if p is None:
                continue
            prepare_keyframes(model, timestep, p.hooks, model_options)
            hooked_to_run.setdefault(p.hooks, []).append((p._replace(mult=mult), i))


def calc_cond_batch(
    model: ModelView,
    conds: Sequence[Sequence[Mapping[str, Any]] | None],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> list[torch.Tensor]:
    """One prediction per list in ``conds`` (None or empty gives zeros): the weighted average of
    its entries active at ``timestep`` (sigmas), each over its region (see the module
    docstring); through a ``context_handler`` of ``model_options`` when it takes the call, and
    inside the ``calc_cond_batch`` wrappers."""
    handler = model_options.get("context_handler")
    if handler is not None and handler.should_use_context(model, conds, x_in, timestep, model_options):
        return handler.execute(_calc_cond_batch_outer, model, conds, x_in, timestep, model_options)
    return _calc_cond_batch_outer(model, conds, x_in, timestep, model_options)


def _calc_cond_batch_outer(
    model: ModelView,
    conds: Sequence[Sequence[Mapping[str, Any]] | None],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> list[torch.Tensor]:
    from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP, get_all_wrappers

    wrappers = get_all_wrappers(WrappersMP.CALC_COND_BATCH, dict(model_options), is_model_options=True)
    if not wrappers:
        return _calc_cond_batch(model, conds, x_in, timestep, model_options)
    executor = WrapperExecutor.new_executor(_calc_cond_batch, wrappers)
    return executor.execute(model, conds, x_in, timestep, model_options)


def _free_memory(model: Any, device: torch.device) -> float:
    """Bytes free where the model computes (unbounded when nobody can say)."""
    patcher = getattr(model, "current_patcher", None)
    ask = getattr(patcher, "get_free_memory", None)
    if callable(ask):
        return float(ask(device))
    target = torch.device(getattr(patcher, "load_device", None) or device)
    if target.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(target)
        return float(free)
    return math.inf


def _batch_fits(model: Any, input_shape: list[int], cond_shapes: Mapping[str, list[Any]], free: float) -> bool:
    try:
        required = model.memory_required(input_shape, cond_shapes=cond_shapes)
    except (AttributeError, TypeError):
        return True  # a stand-in model with no estimate: one call for everything
    return float(required) * 1.5 < free


def _pick_batch(model: Any, to_run: list[tuple[CondObj, int]], free: float) -> list[int]:
    """Indices in ``to_run`` of the entries the next call takes: those that can join the first,
    as many as fit in memory (the reference's order: the last added first)."""
    first = to_run[0][0]
    joinable = [i for i, (p, _) in enumerate(to_run) if can_concat_cond(p, first)]
    joinable.reverse()
    for parts in range(1, len(joinable) + 1):
        batch = joinable[: len(joinable) // parts]
        input_shape = [len(batch) * first.input_x.shape[0], *first.input_x.shape[1:]]
        cond_shapes: dict[str, list[Any]] = collections.defaultdict(list)
        for index in batch:
            for k, v in to_run[index][0].conditioning.items():
                cond_shapes[k].append(v.size())
        if _batch_fits(model, input_shape, cond_shapes, free):
            return batch
    return joinable[:1]


def _calc_cond_batch(
    model: ModelView,
    conds: Sequence[Sequence[Mapping[str, Any]] | None],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> list[torch.Tensor]:
    area_and_mult = lookup("comfy.samplers", "get_area_and_mult", get_area_and_mult)
    out_conds: list[torch.Tensor] = []
    out_counts: list[torch.Tensor] = []
    hooked_to_run: dict[Any, list[tuple[CondObj, int]]] = {}
    default_conds: list[list[Mapping[str, Any]]] = []
    for i, entries in enumerate(conds):
        out_conds.append(torch.zeros_like(x_in))
        out_counts.append(torch.ones_like(x_in) * _EMPTY_COUNT)
        defaults: list[Mapping[str, Any]] = []
        for x in entries or ():
            if "default" in x:
                defaults.append(x)
                continue
            p = area_and_mult(x, x_in, timestep)
            if p is not None:
                prepare_keyframes(model, timestep, p.hooks, model_options)
                hooked_to_run.setdefault(p.hooks, []).append((p, i))
        default_conds.append(defaults)
    if any(default_conds):
        finalize_default_conds(model, hooked_to_run, default_conds, x_in, timestep, model_options)
    # The MODEL's ON_PREPARE_STATE callbacks, once per evaluation (where the reference calls them).
    prepare_state = getattr(getattr(model, "current_patcher", None), "prepare_state", None)
    if callable(prepare_state):
        prepare_state(timestep, model_options)

    free = _free_memory(model, x_in.device)
    wrapper = model_options.get("model_function_wrapper")
    # Each hook group's calls run with its weights (plugins.core_nodes.hooks); None: the MODEL's own.
    for hooks, to_run in hooked_to_run.items():
        while to_run:
            picked = [to_run.pop(i) for i in _pick_batch(model, to_run, free)]
            objs = [p for p, _ in picked]
            cond_or_uncond = [i for _, i in picked]
            chunks = len(picked)
            input_x = torch.cat([p.input_x for p in objs])
            c = cond_cat([p.conditioning for p in objs])
            timestep_ = torch.cat([timestep] * chunks)
            transformer_options = apply_group(model, hooks, model_options)
            patches = objs[-1].patches
            if patches is not None:
                merged = {k: list(v) for k, v in transformer_options.get("patches", {}).items()}
                for k, v in patches.items():
                    merged[k] = merged.get(k, []) + list(v)
                transformer_options["patches"] = merged
            transformer_options["cond_or_uncond"] = cond_or_uncond[:]
            transformer_options["uuids"] = [p.uuid for p in objs]
            transformer_options["sigmas"] = timestep
            c["transformer_options"] = transformer_options
            control = objs[-1].control
            if control is not None:
                c["control"] = control.get_control(input_x, timestep_, c, chunks, transformer_options)
            if wrapper is not None:
                args = {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
                output = wrapper(model.apply_model, args).chunk(chunks)
            else:
                output = model.apply_model(input_x, timestep_, **c).chunk(chunks)
            for o, p in enumerate(objs):
                out_c, out_cts = out_conds[cond_or_uncond[o]], out_counts[cond_or_uncond[o]]
                if p.area is not None:
                    dims = len(p.area) // 2
                    for d in range(dims):
                        out_c = out_c.narrow(d + 2, p.area[d + dims], p.area[d])
                        out_cts = out_cts.narrow(d + 2, p.area[d + dims], p.area[d])
                out_c += output[o] * p.mult
                out_cts += p.mult
    return [out / count for out, count in zip(out_conds, out_counts, strict=True)]


def cfg_function(
    model: ModelView,
    cond_pred: torch.Tensor,
    uncond_pred: torch.Tensor,
    cond_scale: float,
    x: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any] | None = None,
    cond: Any = None,
    uncond: Any = None,
) -> torch.Tensor:
    """``uncond + (cond - uncond) * cond_scale``, or the MODEL's ``sampler_cfg_function`` (which
    works on noise predictions ``x - denoised``), then each ``sampler_post_cfg_function``."""
    options = model_options if model_options is not None else {}
    cfg_fn = options.get("sampler_cfg_function")
    if cfg_fn is not None:
        args = {
            "cond": x - cond_pred,
            "uncond": x - uncond_pred,
            "cond_scale": cond_scale,
            "timestep": timestep,
            "input": x,
            "sigma": timestep,
            "cond_denoised": cond_pred,
            "uncond_denoised": uncond_pred,
            "model": model,
            "model_options": options,
            "input_cond": cond,
            "input_uncond": uncond,
        }
        result = x - cfg_fn(args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    return run_post_cfg(options, result, model, cond, uncond, cond_pred, uncond_pred, cond_scale, x, timestep)


def run_pre_cfg(
    options: Mapping[str, Any],
    conds: list[Any],
    out: list[torch.Tensor],
    cond_scale: float,
    x: torch.Tensor,
    timestep: torch.Tensor,
    model: Any,
) -> list[torch.Tensor]:
    """The MODEL's ``sampler_pre_cfg_function`` chain on the predictions ``out`` of ``conds``
    (each gets the reference's argument dict, with the previous one's result)."""
    for pre in options.get("sampler_pre_cfg_function", ()):
        args = {
            "conds": conds,
            "conds_out": out,
            "cond_scale": cond_scale,
            "timestep": timestep,
            "input": x,
            "sigma": timestep,
            "model": model,
            "model_options": options,
        }
        out = pre(args)
    return out


def run_post_cfg(
    options: Mapping[str, Any],
    result: torch.Tensor,
    model: Any,
    cond: Any,
    uncond: Any,
    cond_pred: torch.Tensor,
    uncond_pred: torch.Tensor,
    cond_scale: float,
    x: torch.Tensor,
    timestep: torch.Tensor,
    **extra: Any,
) -> torch.Tensor:
    """The MODEL's ``sampler_post_cfg_function`` chain on the guided ``result``; ``extra`` keys
    (a guider's own, e.g. Perp-Neg's empty prompt) follow the reference's argument dict."""
    for post in options.get("sampler_post_cfg_function", ()):
        args = {
            "denoised": result,
            "cond": cond,
            "uncond": uncond,
            "cond_scale": cond_scale,
            "model": model,
            "uncond_denoised": uncond_pred,
            "cond_denoised": cond_pred,
            "sigma": timestep,
            "model_options": options,
            "input": x,
            **extra,
        }
        result = post(args)
    return result


def sampling_function(
    model: ModelView,
    x: torch.Tensor,
    timestep: torch.Tensor,
    uncond: Sequence[Mapping[str, Any]] | None,
    cond: Sequence[Mapping[str, Any]] | None,
    cond_scale: float,
    model_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """One guided denoising step: both predictions, the pre-CFG hooks, then :func:`cfg_function`.

    With ``cond_scale`` 1 the unconditional pass is skipped (its prediction is 0) unless the
    MODEL sets ``disable_cfg1_optimization``.
    """
    options = model_options if model_options is not None else {}
    skip_uncond = math.isclose(cond_scale, 1.0) and not options.get("disable_cfg1_optimization", False)
    uncond_ = None if skip_uncond else uncond
    conds = [cond, uncond_]
    batch_fn = options.get("sampler_calc_cond_batch_function")
    if batch_fn is not None:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": options}
        out = batch_fn(args)
    else:
        out = lookup("comfy.samplers", "calc_cond_batch", calc_cond_batch)(model, conds, x, timestep, options)
    out = run_pre_cfg(options, conds, out, cond_scale, x, timestep, model)
    cfg = lookup("comfy.samplers", "cfg_function", cfg_function)
    return cfg(
        model, out[0], out[1], cond_scale, x, timestep, model_options=options, cond=cond, uncond=uncond_
    )


def with_post_cfg_function(
    model_options: Mapping[str, Any], fn: Callable[[dict[str, Any]], torch.Tensor], disable_cfg1: bool = False
) -> dict[str, Any]:
    """A copy of ``model_options`` with ``fn`` appended to its post-CFG functions (the
    reference's ``set_model_options_post_cfg_function``)."""
    options = dict(model_options)
    options["sampler_post_cfg_function"] = [*options.get("sampler_post_cfg_function", []), fn]
    if disable_cfg1:
        options["disable_cfg1_optimization"] = True
    return options


__all__ = [
    "AREA_FADE",
    "COND",
    "UNCOND",
    "CondObj",
    "ModelView",
    "calc_cond_batch",
    "can_concat_cond",
    "cfg_function",
    "cond_cat",
    "cond_equal_size",
    "finalize_default_conds",
    "get_area_and_mult",
    "run_post_cfg",
    "run_pre_cfg",
    "sampling_function",
    "with_post_cfg_function",
]
