"""The reference's per-step guidance functions, with its names, signatures and argument dicts.

Custom-node packs call and replace these under ``comfy.samplers`` (``sampling_function``,
``calc_cond_batch``, ``cfg_function``) and hook into them through a MODEL's ``model_options``
(``sampler_cfg_function``, ``sampler_pre_cfg_function``, ``sampler_post_cfg_function``,
``sampler_calc_cond_batch_function``, ``model_function_wrapper``, ``disable_cfg1_optimization``),
so the guider (:mod:`plugins.core_nodes.guidance`) runs every model evaluation through them.

Two deliberate differences from the reference:

* the conds are lists of :class:`plugins.core_nodes.guidance.ResolvedCond`, not the reference's
  dicts of ``model_conds``; packs that only pass them on (``calc_cond_batch(model, conds, ...)``)
  work, packs that read cond internals do not;
* every cond entry is its own model call (``cond_or_uncond`` has one item), never a cond and an
  uncond concatenated into one batch, so the numbers are those of the unbatched computation.

The ``model`` argument is a :class:`ModelView`: the reference's ``BaseModel`` as these
functions use it, ``apply_model(x, t, c_concat=None, c_crossattn=None, control=None,
transformer_options={}, **kwargs)`` returning the denoised latent.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from plugins.core_nodes.guidance import ResolvedCond

# The reference's indices in ``conds`` and values in ``cond_or_uncond``.
COND = 0
UNCOND = 1
# Starting weight of every pixel, so a region no entry covers divides to 0 instead of NaN.
_EMPTY_COUNT = 1e-37


def _accepts_transformer_options(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "transformer_options" or p.kind is p.VAR_KEYWORD for p in params)


class ModelView:
    """A MODEL as the reference's ``BaseModel`` (``model.model``) looks to sampling functions.

    ``apply_model`` runs the MODEL's denoiser; ``current_patcher`` is the MODEL itself (the
    reference's back-reference); any other attribute is read from the MODEL's ``model`` view
    (``model_sampling``, ``latent_format``, ``diffusion_model``...) or the MODEL.
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

    def _part(self, name: str) -> Any:
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


def _transformer_options(
    model_options: Mapping[str, Any], cond_or_uncond: list[int], uuids: list[Any], sigmas: torch.Tensor
) -> dict[str, Any]:
    """The reference's per-call ``transformer_options``: the MODEL's own, plus where we are."""
    options = dict(model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = cond_or_uncond
    options["uuids"] = uuids
    options["sigmas"] = sigmas
    return options


def calc_cond_batch(
    model: ModelView,
    conds: Sequence[Sequence[ResolvedCond] | None],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> list[torch.Tensor]:
    """One prediction per list in ``conds`` (None gives zeros): the weighted average of every
    entry active at ``timestep`` (a sigma per batch item), each over its area and mask; inside
    the ``calc_cond_batch`` wrappers of ``model_options``."""
    from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP, get_all_wrappers

    wrappers = get_all_wrappers(WrappersMP.CALC_COND_BATCH, dict(model_options), is_model_options=True)
    if not wrappers:
        return _calc_cond_batch(model, conds, x_in, timestep, model_options)
    executor = WrapperExecutor.new_executor(_calc_cond_batch, wrappers)
    return executor.execute(model, conds, x_in, timestep, model_options)


def _calc_cond_batch(
    model: ModelView,
    conds: Sequence[Sequence[ResolvedCond] | None],
    x_in: torch.Tensor,
    timestep: torch.Tensor,
    model_options: Mapping[str, Any],
) -> list[torch.Tensor]:
    from plugins.core_nodes.guidance import cond_weights

    _, _, height, width = x_in.shape
    level = float(timestep.reshape(-1)[0])
    wrapper = model_options.get("model_function_wrapper")
    outputs: list[torch.Tensor] = []
    for index, entries in enumerate(conds):
        out = torch.zeros_like(x_in)
        count = torch.full_like(x_in, _EMPTY_COUNT)
        for cond in entries or ():
            if not cond.active(level):
                continue
            h, w, y, x0 = cond.area
            region = (slice(None), slice(None), slice(y, y + h), slice(x0, x0 + w))
            input_x = x_in[region]
            c = cond.model_inputs(x_in, region)
            c["transformer_options"] = _transformer_options(model_options, [index], [cond.uuid], timestep)
            if cond.control is not None:
                control = cond.control.get_control(
                    input_x, timestep, _control_cond(model, c, input_x), 1, c["transformer_options"]
                )
                if control is not None:
                    c["control"] = control
            if wrapper is not None:
                args = {"input": input_x, "timestep": timestep, "c": c, "cond_or_uncond": [index]}
                prediction = wrapper(model.apply_model, args)
            else:
                prediction = model.apply_model(input_x, timestep, **c)
            mult = cond_weights(cond, x_in, height, width)
            out[region] += prediction * mult
            count[region] += mult
        outputs.append(out / count)
    return outputs


def _control_cond(model: ModelView, c: Mapping[str, Any], x: torch.Tensor) -> dict[str, Any]:
    """The cond a control reads: the call's inputs plus the ADM vector ``y`` the MODEL derives
    from them (SDXL ControlNets take it as the UNet does)."""
    out = dict(c)
    if "y" not in out:
        try:
            encode_adm = model.encode_adm
        except AttributeError:
            return out
        y = encode_adm(out, x)
        if y is not None:
            out["y"] = y
    return out


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
        }
        result = x - cfg_fn(args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
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
        }
        result = post(args)
    return result


def sampling_function(
    model: ModelView,
    x: torch.Tensor,
    timestep: torch.Tensor,
    uncond: Sequence[ResolvedCond] | None,
    cond: Sequence[ResolvedCond] | None,
    cond_scale: float,
    model_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """One guided denoising step: both predictions, the pre-CFG hooks, then :func:`cfg_function`.

    With ``cond_scale`` 1 the unconditional pass is skipped (its prediction is 0) unless the
    MODEL sets ``disable_cfg1_optimization``.
    """
    from plugins.core_nodes.patchpoints import lookup

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
    "COND",
    "UNCOND",
    "ModelView",
    "calc_cond_batch",
    "cfg_function",
    "sampling_function",
    "with_post_cfg_function",
]
