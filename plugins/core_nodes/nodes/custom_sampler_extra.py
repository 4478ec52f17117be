"""More custom-sampling nodes: CFG override, dual-model guider, ER-SDE and SA-Solver samplers (group A).

Same module as :mod:`.custom_sampler` in the reference (``comfy_extras.nodes_custom_sampler``).
The sampler nodes build the reference's ``KSAMPLER`` objects with options; the guider is a
:class:`plugins.core_nodes.guidance.CFGGuider` whose unconditional pass may run on a second MODEL.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from plugins.core_nodes.nodes.common import CoreNode

if TYPE_CHECKING:
    import torch

_MODULE = "comfy_extras.nodes_custom_sampler"


class _Node(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    # The reference's schemas name no display name for the sampler nodes: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


def _float(default: float, hi: float, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"advanced": True, "default": default, "min": 0.0, "max": hi, "step": 0.01, **extra})


def _cfg(default: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def _percent(default: float, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {**extra, "default": default, "min": 0.0, "max": 1.0, "step": 0.001})


# --- samplers ------------------------------------------------------------------------------------

ER_SDE_SOLVERS = ["ER-SDE", "Reverse-time SDE", "ODE"]


class _SamplerNode(_Node):
    """A node that makes a SAMPLER."""

    CATEGORY = "model/sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"


class SamplerER_SDE(_SamplerNode):

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "solver_type": (list(ER_SDE_SOLVERS),),
                "max_stage": ("INT", {"advanced": True, "default": 3, "min": 1, "max": 3}),
                "eta": _float(1.0, 100.0, round=False),
                "s_noise": _float(1.0, 100.0, round=False),
            }
        }

    def get_sampler(self, solver_type: str, max_stage: int, eta: float, s_noise: float) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import ksampler
        from plugins.core_nodes.sampling.sde_options import reverse_time_scaler

        if solver_type not in ER_SDE_SOLVERS:
            raise ValueError(f"unknown solver_type {solver_type!r}")
        # The ODE (and the SDE at eta 0) injects no noise at all.
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0.0, 0.0
        scaler = None if solver_type == "ER-SDE" else reverse_time_scaler(eta)
        options = {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage}
        return (ksampler("er_sde", options),)


class SamplerSASolver(_SamplerNode):

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "eta": _float(1.0, 10.0, round=False),
                "sde_start_percent": _percent(0.2, advanced=True),
                "sde_end_percent": _percent(0.8, advanced=True),
                "s_noise": _float(1.0, 100.0, round=False),
                "predictor_order": ("INT", {"advanced": True, "default": 3, "min": 1, "max": 6}),
                "corrector_order": ("INT", {"advanced": True, "default": 4, "min": 0, "max": 6}),
                "use_pece": ("BOOLEAN", {"advanced": True}),
                "simple_order_2": ("BOOLEAN", {"advanced": True}),
            }
        }

    def get_sampler(
        self,
        model: Any,
        eta: float,
        sde_start_percent: float,
        sde_end_percent: float,
        s_noise: float,
        predictor_order: int,
        corrector_order: int,
        use_pece: bool,
        simple_order_2: bool,
    ) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import ksampler, model_sampling_of
        from plugins.core_nodes.sampling.sde_options import tau_interval

        sampling = model_sampling_of(model)
        # Noise is injected only while sigma lies between these two points of the schedule.
        start_sigma = float(sampling.percent_to_sigma(sde_start_percent))
        end_sigma = float(sampling.percent_to_sigma(sde_end_percent))
        options = {
            "tau_func": tau_interval(start_sigma, end_sigma, eta=eta),
            "s_noise": s_noise,
            "predictor_order": predictor_order,
            "corrector_order": corrector_order,
            "use_pece": bool(use_pece),
            "simple_order_2": bool(simple_order_2),
        }
        return (ksampler("sa_solver", options),)


# --- guidance ------------------------------------------------------------------------------------


def cfg_override_wrapper(cfg: float, start_sigma: float, end_sigma: float) -> Any:
    """A ``predict_noise`` wrapper that runs the guider at ``cfg`` while the step's sigma lies in
    [end_sigma, start_sigma]. Wrappers of later (downstream) MODEL clones run inside those of
    earlier ones, so where ranges overlap the override closest to the sampler wins."""

    def wrapper(executor: Any, x: torch.Tensor, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        guider = executor.class_obj
        sigma = float(timestep.reshape(-1)[0])
        if guider is None or not hasattr(guider, "cfg") or not start_sigma >= sigma >= end_sigma:
            return executor(x, timestep, *args, **kwargs)
        previous = guider.cfg
        guider.cfg = cfg
        try:
            return executor(x, timestep, *args, **kwargs)
        finally:
            guider.cfg = previous

    return wrapper


class CFGOverride(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/sampling/guiders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "cfg": _cfg(1.0),
                "start_percent": _percent(0.0),
                "end_percent": _percent(1.0),
            }
        }

    def patch(self, model: Any, cfg: float, start_percent: float, end_percent: float) -> tuple[Any]:
        from plugins.core_nodes.models.extension import WrappersMP
        from plugins.core_nodes.sampler_objects import model_sampling_of

        sampling = model_sampling_of(model)
        start_sigma = float(sampling.percent_to_sigma(start_percent))
        end_sigma = float(sampling.percent_to_sigma(end_percent))
        patched = model.clone()
        patched.add_wrapper_with_key(
            WrappersMP.PREDICT_NOISE, "cfg_override", cfg_override_wrapper(cfg, start_sigma, end_sigma)
        )
        return (patched,)


def zeroed_conditioning(conditioning: list[list[Any]]) -> list[list[Any]]:
    """``conditioning`` with its text embeddings and pooled outputs zeroed (every other key kept):
    the unconditional pass of a prompt-free negative."""
    import torch

    out: list[list[Any]] = []
    for embedding, options in conditioning:
        options = dict(options)
        pooled = options.get("pooled_output")
        if pooled is not None:
            options["pooled_output"] = torch.zeros_like(pooled)
        out.append([torch.zeros_like(embedding), options])
    return out


@functools.cache
def _guider_class() -> type:
    """:class:`DualModelGuider`'s guider class, built on first use (guidance imports torch)."""
    from plugins.core_nodes.cfg import ModelView, calc_cond_batch, cfg_function, run_pre_cfg
    from plugins.core_nodes.guidance import CFGGuider, copy_model_options
    from plugins.core_nodes.patchpoints import lookup

    class DualModelCFGGuider(CFGGuider):
        """CFG with the conditional pass on ``model`` and the unconditional one on
        ``model_negative`` (a second MODEL, e.g. a distilled unconditional network); without a
        second MODEL it is the plain :class:`CFGGuider`. The conds are prepared once, for
        ``model``: the two MODELs are expected to share a family (and so a cond format)."""

        def __init__(self, model_patcher: Any, model_negative: Any = None) -> None:
            super().__init__(model_patcher)
            self.model_negative = model_negative
            self.negative_model = ModelView(model_negative) if model_negative is not None else None

        def _negative_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
            own = copy_model_options(getattr(self.model_negative, "model_options", None) or {})
            transformer = own.setdefault("transformer_options", {})
            sample_sigmas = (options.get("transformer_options") or {}).get("sample_sigmas")
            if sample_sigmas is not None:
                transformer["sample_sigmas"] = sample_sigmas
            return own

        def predict_noise(
            self,
            x: torch.Tensor,
            timestep: torch.Tensor,
            model_options: Mapping[str, Any] | None = None,
            seed: int | None = None,
        ) -> torch.Tensor:
            if self.negative_model is None:
                return super().predict_noise(x, timestep, model_options, seed)
            import torch

            options = self.model_options if model_options is None else model_options
            batch = lookup("comfy.samplers", "calc_cond_batch", calc_cond_batch)
            positive, negative = self.conds.get("positive"), self.conds.get("negative")
            cond_pred = batch(self.inner_model, [positive], x, timestep, options)[0]
            skip = math.isclose(self.cfg, 1.0) and not options.get("disable_cfg1_optimization", False)
            if skip:
                uncond_pred = torch.zeros_like(cond_pred)
                negative = None
            else:
                uncond_pred = batch(
                    self.negative_model, [negative], x, timestep, self._negative_options(options)
                )[0]
            out = [cond_pred, uncond_pred]
            out = run_pre_cfg(options, [positive, negative], out, self.cfg, x, timestep, self.inner_model)
            cfg = lookup("comfy.samplers", "cfg_function", cfg_function)
            return cfg(
                self.inner_model, out[0], out[1], self.cfg, x, timestep,
                model_options=options, cond=positive, uncond=negative,
            )  # fmt: skip

    return DualModelCFGGuider


class DualModelGuider(CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/sampling/guiders"
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "cfg": _cfg(4.0)},
            "optional": {"model_negative": ("MODEL",), "negative": ("CONDITIONING",)},
        }

    def get_guider(
        self,
        model: Any,
        positive: list[list[Any]],
        cfg: float,
        model_negative: Any = None,
        negative: list[list[Any]] | None = None,
    ) -> tuple[Any]:
        guider = _guider_class()(model, model_negative)
        # No negative prompt: the unconditional pass sees the positive entries with their text zeroed.
        guider.set_conds(positive, negative if negative is not None else zeroed_conditioning(positive))
        guider.set_cfg(cfg)
        return (guider,)


NODES: dict[str, tuple[type, str | None]] = {
    "SamplerER_SDE": (SamplerER_SDE, None),
    "SamplerSASolver": (SamplerSASolver, None),
    "CFGOverride": (CFGOverride, "CFG Override"),
    "DualModelGuider": (DualModelGuider, "Dual Model CFG Guider"),
}
