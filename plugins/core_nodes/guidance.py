"""Classifier-free guidance and the application of CONDITIONING entries to a model call.

A CONDITIONING value is a list of ``[cross_attn [1, T, C], options]`` pairs. For each model
evaluation, every entry that is active at the current sigma (``start_percent`` / ``end_percent``)
predicts its region of the latent (``area``, optionally narrowed to a ``mask``'s bounds), weighted
by ``strength`` times the mask (times ``mask_strength``) and a linear ramp along area edges that
lie inside the image; the predictions are averaged by those weights. Positive and negative are
resolved the same way and combined as ``uncond + cfg * (cond - uncond)``; with ``cfg == 1`` the
negative pass is skipped, as in the reference.

Every model evaluation goes through the reference-signature functions of
:mod:`plugins.core_nodes.cfg`, looked up through :mod:`plugins.core_nodes.patchpoints` at call time
so a pack's replacement of ``comfy.samplers.sampling_function`` is honoured, with the MODEL's
``model_options`` (cfg / pre- / post-cfg functions, model function wrapper...).
:class:`CFGGuider` is the reference's guider API; :class:`Guider` is the same with its conds and
latent fixed at construction (what the KSampler plumbing and the tests use).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kernel.progress import throw_if_interrupted
from plugins.core_nodes.cfg import ModelView, sampling_function, with_post_cfg_function
from plugins.core_nodes.patchpoints import lookup

if TYPE_CHECKING:
    from plugins.core_nodes.contracts import DiffusionModel

# How many latent pixels an area's inner edges fade over, so regions blend instead of seaming.
AREA_FEATHER = 8
# Conditioning options that are handed to the model untouched (SDXL size / crop conditioning).
_PASSTHROUGH = ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "aesthetic_score")


@dataclass
class ResolvedCond:
    """One conditioning entry placed on a concrete latent: its region, weights and model inputs."""

    cross_attn: torch.Tensor
    pooled: torch.Tensor | None
    area: tuple[int, int, int, int]  # (height, width, y, x) in latent pixels
    strength: float
    mask: torch.Tensor | None  # [1 or B, 1, area_h, area_w]
    sigma_start: float
    sigma_end: float
    extra: dict[str, Any] = field(default_factory=dict)
    concat_latent: torch.Tensor | None = None
    concat_mask: torch.Tensor | None = None
    # The inpainting model's (mask, masked latent) over the whole latent, set by the guider.
    concat: tuple[torch.Tensor, torch.Tensor] | None = None
    concat_channels: int = 0
    # The reference gives every cond entry a uuid; patches read it from transformer_options.
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    # The entry's CONTROL_NET chain (``options["control"]``), evaluated for each of its model calls.
    control: Any = None
    # The CONDITIONING entry's own options, as the node chain left them (pack keys included).
    options: dict[str, Any] = field(default_factory=dict)

    # Read-only dict access, as on the reference's cond dicts: packs that replace the sampling
    # functions read ``cond.get("weight")`` (ComfyUI_smZNodes) or ``cond["control"]`` on them.
    def reference_view(self) -> dict[str, Any]:
        """The entry as the reference's processed cond dict: its options, then the placed values."""
        view = {k: v for k, v in self.options.items() if k != "area"}
        view.update(
            cross_attn=self.cross_attn,
            model_conds={"c_crossattn": self.cross_attn},
            area=[*self.area],
            strength=self.strength,
            timestep_start=self.sigma_start,
            timestep_end=self.sigma_end,
            uuid=self.uuid,
        )
        if self.pooled is not None:
            view["pooled_output"] = self.pooled
        if self.mask is not None:
            view["mask"] = self.mask
        if self.control is not None:
            view["control"] = self.control
        return view

    def get(self, key: str, default: Any = None) -> Any:
        return self.reference_view().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.reference_view()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.reference_view()

    def keys(self) -> Any:
        return self.reference_view().keys()

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def model_inputs(self, x: torch.Tensor, region: tuple[slice, ...]) -> dict[str, Any]:
        """The keyword inputs of ``apply_model`` for this entry on ``x`` (the whole latent)."""
        batch = x.shape[0]
        cross_attn = self.cross_attn.to(x)
        inputs: dict[str, Any] = {
            "c_crossattn": cross_attn.expand(batch, -1, -1) if self.cross_attn.shape[0] == 1 else cross_attn,
            **self.extra,
        }
        if self.pooled is not None:
            pooled = self.pooled.to(x)
            inputs["pooled_output"] = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
        if self.concat is not None:
            mask, masked = self.concat
            mask = mask.to(x).expand(batch, -1, -1, -1)
            masked = masked.to(x)
            if masked.shape[0] != batch:
                masked = masked[:1].expand(batch, -1, -1, -1)
            inputs["c_concat"] = torch.cat([mask, masked], dim=1)[:, : self.concat_channels][region]
        return inputs


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(h, w, y, x) of the non-zero region of ``mask`` ``[..., H, W]``, or None when empty."""
    nonzero = (mask.reshape(-1, *mask.shape[-2:]) > 0).any(dim=0)
    rows = torch.nonzero(nonzero.any(dim=1)).flatten()
    cols = torch.nonzero(nonzero.any(dim=0)).flatten()
    if rows.numel() == 0 or cols.numel() == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return (y1 - y0, x1 - x0, y0, x0)


def _resolve_area(options: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    area = options.get("area")
    if area is None:
        return (height, width, 0, 0)
    if area[0] == "percentage":
        h = max(1, round(area[1] * height))
        w = max(1, round(area[2] * width))
        return (h, w, round(area[3] * height), round(area[4] * width))
    h, w, y, x = (int(v) for v in area)
    return (h, w, y, x)


def resolve(conditioning: list[list[Any]], latent: torch.Tensor, model: DiffusionModel) -> list[ResolvedCond]:
    """Place every entry of ``conditioning`` on ``latent`` ``[B, C, h, w]``."""
    _, _, height, width = latent.shape
    ms = model.model_sampling
    resolved: list[ResolvedCond] = []
    for cross_attn, options in conditioning:
        h, w, y, x = _resolve_area(options, height, width)
        mask = options.get("mask")
        if mask is not None:
            mask = mask.float()
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            mask = torch.nn.functional.interpolate(
                mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False
            )
            mask = mask * float(options.get("mask_strength", 1.0))
            if options.get("set_area_to_bounds"):
                bounds = _mask_bounds(mask)
                if bounds is not None:
                    h, w, y, x = bounds
        # Clip the region to the latent so an oversized area never indexes past the edge.
        y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
        h, w = max(1, min(h, height - y)), max(1, min(w, width - x))
        if mask is not None:
            mask = mask[:, :, y : y + h, x : x + w]
        start = float(options.get("start_percent", 0.0))
        end = float(options.get("end_percent", 1.0))
        resolved.append(
            ResolvedCond(
                cross_attn=cross_attn,
                pooled=options.get("pooled_output"),
                area=(h, w, y, x),
                strength=float(options.get("strength", 1.0)),
                mask=mask,
                sigma_start=ms.percent_to_sigma(start),
                sigma_end=ms.percent_to_sigma(end),
                extra={k: options[k] for k in _PASSTHROUGH if k in options},
                concat_latent=options.get("concat_latent_image"),
                concat_mask=options.get("concat_mask"),
                control=options.get("control"),
                options=options,
            )
        )
    return resolved


def controls_of(conds: Mapping[str, list[ResolvedCond]]) -> list[Any]:
    """The distinct control objects of the resolved conds (an object shared by entries once)."""
    seen: dict[int, Any] = {}
    for entries in conds.values():
        for cond in entries:
            if cond.control is not None:
                seen.setdefault(id(cond.control), cond.control)
    return list(seen.values())


def cond_weights(cond: ResolvedCond, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w, y, x0 = cond.area
    mult = torch.full((x.shape[0], 1, h, w), cond.strength, dtype=x.dtype, device=x.device)
    if cond.mask is not None:
        mult = mult * cond.mask.to(device=x.device, dtype=x.dtype)
    ramp = min(AREA_FEATHER, h // 4, w // 4)
    for t in range(ramp):
        factor = (t + 1) / ramp
        if y != 0:
            mult[:, :, t : t + 1, :] *= factor
        if y + h < height:
            mult[:, :, h - 1 - t : h - t, :] *= factor
        if x0 != 0:
            mult[:, :, :, t : t + 1] *= factor
        if x0 + w < width:
            mult[:, :, :, w - 1 - t : w - t] *= factor
    return mult


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
    when one replaced it). ``conds`` holds the resolved entries (:class:`ResolvedCond`) once
    :meth:`prepare` placed them on a latent.
    """

    def __init__(self, model_patcher: DiffusionModel) -> None:
        self.model_patcher = model_patcher
        options = getattr(model_patcher, "model_options", None)
        self.model_options: dict[str, Any] = options if options is not None else {"transformer_options": {}}
        self.inner_model = ModelView(model_patcher)
        self.original_conds: dict[str, list[list[Any]]] = {}
        self.conds: dict[str, list[ResolvedCond]] = {}
        self.cfg = 1.0

    def set_conds(self, positive: list[list[Any]], negative: list[list[Any]]) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def inner_set_conds(self, conds: Mapping[str, list[list[Any]]]) -> None:
        self.original_conds = {name: list(entries) for name, entries in conds.items()}

    def set_cfg(self, cfg: float) -> None:
        self.cfg = float(cfg)

    def prepare(self, latent_image: torch.Tensor, denoise_mask: torch.Tensor | None = None) -> None:
        """Place the conds on ``latent_image`` (model space); ``denoise_mask`` (1 = repaint, at
        latent size) and the latent feed inpainting models' ``c_concat``."""
        self.conds = {}
        for name, entries in self.original_conds.items():
            resolved = resolve(entries, latent_image, self.model_patcher)
            for cond in resolved:
                self._attach_concat(cond, latent_image, denoise_mask)
            self.conds[name] = resolved
        # As the reference's pre_run_control: the controls' percent ranges become sigmas of this
        # MODEL's schedule, and ControlNets take the schedule for their own inputs.
        controls = controls_of(self.conds)
        if controls:
            percent_to_sigma = self.inner_model.model_sampling.percent_to_sigma
            for control in controls:
                control.pre_run(self.inner_model, percent_to_sigma)

    def _attach_concat(
        self, cond: ResolvedCond, latent_image: torch.Tensor, denoise_mask: torch.Tensor | None
    ) -> None:
        channels = int(getattr(self.model_patcher, "concat_channels", 0) or 0)
        if channels <= 0:
            return
        height, width = latent_image.shape[-2:]
        if cond.concat_mask is not None:
            mask = cond.concat_mask.float().reshape(-1, 1, *cond.concat_mask.shape[-2:])
            mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")
        elif denoise_mask is not None:
            mask = denoise_mask[:, :1]
        else:
            mask = torch.ones(1, 1, height, width)
        if cond.concat_latent is not None:
            masked = self.inner_model.latent_format.process_in(cond.concat_latent.float())
        else:
            masked = latent_image
        cond.concat = (mask, masked)
        cond.concat_channels = channels

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
        try:
            wrappers = self._wrappers(WrappersMP.OUTER_SAMPLE, self.model_options)
            executor = WrapperExecutor.new_class_executor(self.outer_sample, self, wrappers)
            return executor.execute(
                noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed
            )
        finally:
            self.model_options = original

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
        self.prepare(model_latent, denoise_mask)
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
    def positive(self) -> list[ResolvedCond]:
        return self.conds["positive"]

    @property
    def negative(self) -> list[ResolvedCond]:
        return self.conds["negative"]


__all__ = [
    "AREA_FEATHER",
    "CFGGuider",
    "DualCFGGuider",
    "Guider",
    "ResolvedCond",
    "cond_weights",
    "controls_of",
    "copy_model_options",
    "resolve",
]
