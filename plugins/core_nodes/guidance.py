"""Classifier-free guidance around one MODEL: the reference's ``CFGGuider`` and its kin.

A guider holds CONDITIONING per prompt (``positive``, ``negative``...), converted to the
reference's cond dicts when set (``original_conds``). When sampling starts they are processed
on the latent (:func:`plugins.core_nodes.cond_prep.process_conds`: areas, masks, sigma ranges,
the model's ``extra_conds``, ControlNets) into ``conds``, and each model evaluation goes through
the reference-signature functions of :mod:`plugins.core_nodes.cfg`, looked up through
:mod:`plugins.core_nodes.patchpoints` at call time so a pack's replacement of
``comfy.samplers.sampling_function`` is honoured, with the MODEL's ``model_options`` (cfg /
pre- / post-cfg functions, model function wrapper...). Positive and negative are combined as
``uncond + cfg * (cond - uncond)``; with ``cfg == 1`` the negative pass is skipped, as in the
reference. :class:`Guider` is a :class:`CFGGuider` with its conds and latent fixed at
construction (what the KSampler plumbing and the tests use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from kernel.progress import throw_if_interrupted
from plugins.core_nodes.cfg import ModelView, sampling_function, with_post_cfg_function
from plugins.core_nodes.cond_prep import CondDict, controls_of, convert_cond, process_conds
from plugins.core_nodes.hooks.sampling import begin_sampling as begin_hook_sampling
from plugins.core_nodes.hooks.sampling import end_sampling as end_hook_sampling
from plugins.core_nodes.hooks.sampling import prepare_conds as prepare_hook_conds
from plugins.core_nodes.patchpoints import lookup

if TYPE_CHECKING:
    from plugins.core_nodes.contracts import DiffusionModel


def copy_model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with nested dicts and lists copied (the reference's model-options clone), so
    what one sampling run adds (``sample_sigmas``) never reaches the MODEL's own dict."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            out[key] = copy_model_options(value)
        elif isinstance(value, list):
            out[key] = list(value)
        else:
            out[key] = value
    return out


class CFGGuider:
    """The reference's ``comfy.samplers.CFGGuider``: conditioning + CFG around one MODEL.

    ``set_conds(positive, negative)`` and ``set_cfg(cfg)`` configure it; ``sample(noise,
    latent_image, sampler, sigmas, ...)`` runs a ``KSAMPLER``-like ``sampler`` over it (latents
    in VAE space in and out). As a denoiser, ``guider(x, sigma, model_options=..., seed=...)``
    predicts the guided x0 through ``comfy.samplers.sampling_function`` (the pack's version
    when one replaced it). ``original_conds`` holds the cond dicts as set; ``conds`` the
    processed ones once :meth:`prepare` placed them on a latent.
    """

    def __init__(self, model_patcher: DiffusionModel) -> None:
        self.model_patcher = model_patcher
        options = getattr(model_patcher, "model_options", None)
        self.model_options: dict[str, Any] = options if options is not None else {"transformer_options": {}}
        self.inner_model = ModelView(model_patcher)
        self.original_conds: dict[str, list[CondDict]] = {}
        self.conds: dict[str, list[CondDict]] = {}
        self.cfg = 1.0

    def set_conds(self, positive: list[list[Any]], negative: list[list[Any]]) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def inner_set_conds(self, conds: Mapping[str, list[list[Any]]]) -> None:
        for name, entries in conds.items():
            self.original_conds[name] = convert_cond(entries)

    def set_cfg(self, cfg: float) -> None:
        self.cfg = float(cfg)

    def prepare(
        self,
        latent_image: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> None:
        """Process copies of the cond dicts on ``latent_image`` (model space): ``denoise_mask``
        (1 = repaint, at latent size) and the latent feed inpainting models' ``c_concat``; the
        model's ``extra_conds`` see ``noise`` (default: the latent, for its shape)."""
        conds = {name: [dict(c) for c in entries] for name, entries in self.original_conds.items()}
        # Only the hooks registered for this run stay on the conds, their keyframes restarted.
        prepare_hook_conds(self.inner_model, conds, self.model_options)
        noise = latent_image if noise is None else noise
        self.conds = process_conds(
            self.inner_model, noise, conds, noise.device, latent_image, denoise_mask, seed
        )

    def _wrappers(self, kind: str, model_options: Mapping[str, Any]) -> list[Any]:
        from plugins.core_nodes.models.extension import get_all_wrappers

        return get_all_wrappers(kind, dict(model_options), is_model_options=True)

    def predict_noise(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The guided x0 prediction (the reference's name; it returns denoised latents)."""
        function = lookup("comfy.samplers", "sampling_function", sampling_function)
        options = self.model_options if model_options is None else model_options
        negative, positive = self.conds.get("negative"), self.conds.get("positive")
        return function(
            self.inner_model, x, timestep, negative, positive, self.cfg, model_options=options, seed=seed
        )

    def outer_predict_noise(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """:meth:`predict_noise` inside the ``predict_noise`` wrappers of the guider's options."""
        from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP

        wrappers = self._wrappers(WrappersMP.PREDICT_NOISE, self.model_options)
        if not wrappers:
            return self.predict_noise(x, timestep, model_options, seed)
        executor = WrapperExecutor.new_class_executor(self.predict_noise, self, wrappers)
        return executor.execute(x, timestep, model_options, seed)

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        throw_if_interrupted()
        return self.outer_predict_noise(x, sigma, model_options, seed)

    def denoise_with_uncond(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided prediction and the unconditional one (for the CFG++ samplers), captured
        by a post-CFG function as the reference's CFG++ samplers do."""
        captured: list[torch.Tensor] = []

        def capture(args: dict[str, Any]) -> torch.Tensor:
            captured.append(args["uncond_denoised"])
            return args["denoised"]

        base = self.model_options if model_options is None else model_options
        out = self(x, sigma, with_post_cfg_function(base, capture, disable_cfg1=True), seed)
        return out, captured[-1]

    def sample(
        self,
        noise: torch.Tensor,
        latent_image: torch.Tensor,
        sampler: Any,
        sigmas: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
        callback: Any = None,
        disable_pbar: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Sample from ``noise`` over ``sigmas`` with ``sampler`` (a ``KSAMPLER``); VAE-space
        ``latent_image`` in (img2img / inpainting source) and the VAE-space result out.

        As in the reference, the run works on a copy of the guider's ``model_options`` into
        which the MODEL's registered wrappers and callbacks are copied, and goes through the
        ``outer_sample`` and ``sampler_sample`` wrappers.
        """
        from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP, copy_nested_dicts

        if sigmas.shape[-1] == 0:
            return latent_image
        original = self.model_options
        self.model_options = copy_model_options(original)
        to = self.model_options.setdefault("transformer_options", {})
        for kind in ("wrappers", "callbacks"):
            registry = getattr(self.model_patcher, kind, None)
            if isinstance(registry, dict):
                to[kind] = copy_nested_dicts(registry)
        # The conds' hooks are registered on the MODEL for this run (undone below).
        hooked = begin_hook_sampling(self.model_patcher, self.original_conds, self.model_options)
        try:
            wrappers = self._wrappers(WrappersMP.OUTER_SAMPLE, self.model_options)
            executor = WrapperExecutor.new_class_executor(self.outer_sample, self, wrappers)
            return executor.execute(
                noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed
            )
        finally:
            self.model_options = original
            if hooked:
                end_hook_sampling(self.model_patcher)

    def outer_sample(
        self,
        noise: torch.Tensor,
        latent_image: torch.Tensor,
        sampler: Any,
        sigmas: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
        callback: Any = None,
        disable_pbar: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The mask at latent size, and the MODEL's ``pre_run`` / ``cleanup`` around the run."""
        from plugins.core_nodes.sampling.masks import prepare_mask

        if denoise_mask is not None:
            denoise_mask = prepare_mask(denoise_mask, noise.shape)
        pre_run = getattr(self.model_patcher, "pre_run", None)
        try:
            if callable(pre_run):
                pre_run()
            return self.inner_sample(
                noise, latent_image, None, sampler, sigmas, denoise_mask, callback, disable_pbar, seed
            )
        finally:
            cleanup = getattr(self.model_patcher, "cleanup", None)
            if callable(cleanup):
                cleanup()

    def inner_sample(
        self,
        noise: torch.Tensor,
        latent_image: torch.Tensor,
        device: Any,
        sampler: Any,
        sigmas: torch.Tensor,
        denoise_mask: torch.Tensor | None,
        callback: Any,
        disable_pbar: bool,
        seed: int | None,
    ) -> torch.Tensor:
        """The conds placed on the model-space latent, then ``sampler.sample`` (through the
        ``sampler_sample`` wrappers) with ``sample_sigmas`` in the transformer options."""
        from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP

        fmt = self.inner_model.latent_format
        model_latent = fmt.process_in(latent_image.float())
        self.prepare(model_latent, denoise_mask, noise, seed)
        options = copy_model_options(self.model_options)
        options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args: dict[str, Any] = {"model_options": options, "seed": seed}
        wrappers = self._wrappers(WrappersMP.SAMPLER_SAMPLE, options)
        executor = WrapperExecutor.new_class_executor(sampler.sample, sampler, wrappers)
        try:
            samples = executor.execute(
                self, sigmas, extra_args, callback, noise, model_latent, denoise_mask, disable_pbar
            )
        finally:
            # Cached hints and the schedule are per run (the reference's cleanup of control models).
            for control in controls_of(self.conds):
                control.cleanup()
        return fmt.process_out(samples.to(torch.float32))


class DualCFGGuider(CFGGuider):
    """The reference's two-prompt guider: ``cond1`` ("positive") guided against ``cond2``
    ("middle") at ``cfg1`` and ``cond2`` against ``negative`` at ``cfg2``, added ("regular") or
    nested (the cond1-vs-cond2 result guided against the negative)."""

    def __init__(self, model_patcher: DiffusionModel) -> None:
        super().__init__(model_patcher)
        self.cfg1 = 1.0
        self.cfg2 = 1.0
        self.nested = False

    def set_conds(  # type: ignore[override]
        self, positive: list[list[Any]], middle: list[list[Any]], negative: list[list[Any]]
    ) -> None:
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

    def set_cfg(self, cfg1: float, cfg2: float = 1.0, nested: bool = False) -> None:  # type: ignore[override]
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), nested

    def predict_noise(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        from plugins.core_nodes.cfg import calc_cond_batch, cfg_function

        options = self.model_options if model_options is None else model_options
        batch = lookup("comfy.samplers", "calc_cond_batch", calc_cond_batch)
        cfg = lookup("comfy.samplers", "cfg_function", cfg_function)
        negative, middle, positive = (self.conds.get(k) for k in ("negative", "middle", "positive"))
        model = self.inner_model
        if self.nested:
            out = batch(model, [negative, middle, positive], x, timestep, options)
            text = cfg(
                model,
                out[2],
                out[1],
                self.cfg1,
                x,
                timestep,
                model_options=options,
                cond=positive,
                uncond=middle,
            )
            return out[0] + self.cfg2 * (text - out[0])
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
            # The skipped passes predict 0, which their factor of 1 would not use.
            negative = None
            if math.isclose(self.cfg1, 1.0):
                middle = None
        out = batch(model, [negative, middle, positive], x, timestep, options)
        guided = cfg(
            model, out[1], out[0], self.cfg2, x, timestep, model_options=options, cond=middle, uncond=negative
        )
        return guided + (out[2] - out[1]) * self.cfg1


class Guider(CFGGuider):
    """A :class:`CFGGuider` with its conds, cfg and latent (model space) fixed at construction:
    ``guider(x, sigma)`` is the plain denoiser the samplers call."""

    def __init__(
        self,
        model: DiffusionModel,
        positive: list[list[Any]],
        negative: list[list[Any]],
        cfg: float,
        latent_image: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__(model)
        self.set_conds(positive, negative)
        self.set_cfg(cfg)
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask
        self.prepare(latent_image, denoise_mask)

    @property
    def model(self) -> DiffusionModel:
        return self.model_patcher

    @property
    def positive(self) -> list[CondDict]:
        return self.conds["positive"]

    @property
    def negative(self) -> list[CondDict]:
        return self.conds["negative"]


__all__ = [
    "CFGGuider",
    "DualCFGGuider",
    "Guider",
    "copy_model_options",
]
