"""The reference's sampler objects and sampling entry points, over our samplers and guider.

What ``comfy.samplers`` and ``comfy.sample`` expose to packs (``KSampler``, ``KSAMPLER``,
``ksampler``, ``sampler_object``, ``sample``, ``calculate_sigmas``, ``comfy.sample.sample`` /
``sample_custom``) lives here so the core KSampler node runs the same chain the reference's does:

    comfy.sample.sample -> comfy.samplers.KSampler.sample -> comfy.samplers.sample
    -> CFGGuider.sample -> KSAMPLER.sample -> comfy.k_diffusion.sampling.sample_<name>

Each arrow looks the next function up through :mod:`plugins.core_nodes.patchpoints` at call
time, so a pack that replaced one of them in the ``comfy.*`` module (Impact-Pack wraps
``comfy.sample.sample``, Easy-Use ``comfy.samplers.sample``, AnimateDiff ``sampling_function``)
is called by our KSampler node too. Latents are VAE-space at the ``sample`` functions and
model-space inside ``CFGGuider.sample``, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.patchpoints import lookup
from plugins.core_nodes.sampling import kdiffusion
from plugins.core_nodes.sampling.names import SAMPLER_NAMES as _SAMPLER_NAMES
from plugins.core_nodes.sampling.names import SCHEDULER_NAMES as _SCHEDULER_NAMES
from plugins.core_nodes.sampling.noise import next_seed
from plugins.core_nodes.sampling.schedules import DISCARD_PENULTIMATE_SIGMA_SAMPLERS
from plugins.core_nodes.sampling.schedules import calculate_sigmas as _schedule

KSAMPLER_NAMES: list[str] = list(kdiffusion.KSAMPLER_NAMES)
SAMPLER_NAMES: list[str] = list(_SAMPLER_NAMES)
SCHEDULER_NAMES: list[str] = list(_SCHEDULER_NAMES)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, int], Any]


class SchedulerHandler(NamedTuple):
    """A scheduler: ``handler(model_sampling, steps)`` when ``use_ms``, else
    ``handler(n=steps, sigma_min=..., sigma_max=...)`` (the reference's record)."""

    handler: Callable[..., torch.Tensor]
    use_ms: bool = True


def _scheduler(name: str) -> Callable[[Any, int], torch.Tensor]:
    def handler(model_sampling: Any, steps: int) -> torch.Tensor:
        return _schedule(model_sampling, name, steps)

    handler.__name__ = f"{name}_scheduler"
    return handler


def scheduler_handlers() -> dict[str, SchedulerHandler]:
    """A fresh name -> handler table of every scheduler KSampler offers."""
    return {name: SchedulerHandler(_scheduler(name)) for name in SCHEDULER_NAMES}


def calculate_sigmas(
    model_sampling: Any,
    scheduler_name: str,
    steps: int,
    handlers: Mapping[str, SchedulerHandler] | None = None,
) -> torch.Tensor:
    """``steps`` + 1 sigmas ending in 0 for ``scheduler_name``; ``handlers`` (the compat
    module's ``SCHEDULER_HANDLERS``, which packs extend) is consulted first."""
    handler = (handlers or {}).get(scheduler_name)
    if handler is None:
        return _schedule(model_sampling, scheduler_name, steps)
    if handler.use_ms:
        return handler.handler(model_sampling, steps)
    return handler.handler(
        n=steps, sigma_min=float(model_sampling.sigma_min), sigma_max=float(model_sampling.sigma_max)
    )


def model_sampling_of(model: Any) -> Any:
    """A MODEL's schedule: ``get_model_object("model_sampling")`` (a pack's object patch first),
    or the ``model_sampling`` attribute of models without the ModelPatcher API."""
    get = getattr(model, "get_model_object", None)
    if callable(get):
        return get("model_sampling")
    return model.model_sampling


class InpaintDenoiser:
    """The reference's ``KSamplerX0Inpaint``: the guider as the sampler's denoiser, pinning the
    kept region (``denoise_mask`` 0) to the source latent re-noised to the current sigma, after
    the MODEL's ``denoise_mask_function`` (if any) had its say about the mask."""

    def __init__(self, model: Any, sigmas: torch.Tensor) -> None:
        self.inner_model = model
        self.sigmas = sigmas
        self.latent_image: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        options = model_options if model_options is not None else {}
        keep = None
        if denoise_mask is not None:
            mask_fn = options.get("denoise_mask_function")
            if mask_fn is not None:
                extra = {"model": self.inner_model, "sigmas": self.sigmas}
                denoise_mask = mask_fn(sigma, denoise_mask, extra_options=extra)
            keep = 1.0 - denoise_mask
            ms = self.inner_model.inner_model.model_sampling
            x = x * denoise_mask + ms.noise_scaling(sigma, self.noise, self.latent_image) * keep
        out = self.inner_model(x, sigma, model_options=options, seed=seed)
        if denoise_mask is not None and keep is not None:
            out = out * denoise_mask + self.latent_image * keep
        return out


class Sampler:
    """The reference's sampler base class: ``sample(...)`` plus the full-denoise test."""

    def sample(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def max_denoise(self, model_wrap: Any, sigmas: torch.Tensor) -> bool:
        """Whether sampling starts at the model's top sigma (pure noise, no source latent)."""
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler):
    """A k-diffusion-style ``sampler_function(model, x, sigmas, extra_args=, callback=,
    disable=, **extra_options)`` as a sampler object (``inpaint_options={"random": True}``
    inpaints with fresh noise from ``seed + 1``, as ``ddim`` does)."""

    def __init__(
        self,
        sampler_function: Callable[..., torch.Tensor],
        extra_options: Mapping[str, Any] | None = None,
        inpaint_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.sampler_function = sampler_function
        self.extra_options = dict(extra_options or {})
        self.inpaint_options = dict(inpaint_options or {})

    def sample(
        self,
        model_wrap: Any,
        sigmas: torch.Tensor,
        extra_args: dict[str, Any],
        callback: StepCallback | None,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        extra_args["denoise_mask"] = denoise_mask
        model_k = InpaintDenoiser(model_wrap, sigmas)
        if latent_image is None:
            latent_image = torch.zeros_like(noise)
        model_k.latent_image = latent_image
        if self.inpaint_options.get("random", False):
            seed = extra_args.get("seed")
            generator = torch.Generator(device="cpu").manual_seed(
                next_seed(41 if seed is None else int(seed))
            )
            fresh = torch.randn(noise.shape, generator=generator, device="cpu")
            model_k.noise = fresh.to(noise.dtype).to(noise.device)
        else:
            model_k.noise = noise
        ms = model_wrap.inner_model.model_sampling
        x = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        k_callback = None
        if callback is not None:
            total_steps = len(sigmas) - 1
            user = callback

            def k_callback(step: dict[str, Any]) -> None:
                user(step["i"], step["denoised"], step["x"], total_steps)

        samples = self.sampler_function(
            model_k,
            x,
            sigmas,
            extra_args=extra_args,
            callback=k_callback,
            disable=disable_pbar,
            **self.extra_options,
        )
        return ms.inverse_noise_scaling(sigmas[-1], samples)


def _k_function(name: str) -> Callable[..., torch.Tensor] | None:
    """``comfy.k_diffusion.sampling.sample_<name>`` as it is now (a pack may add or replace
    one), else ours, else None."""
    ours = kdiffusion.SAMPLE_FUNCTIONS.get(name)
    found = lookup("comfy.k_diffusion.sampling", f"sample_{name}", ours or _missing)
    return None if found is _missing else found


def _missing(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - a sentinel, never called
    raise NotImplementedError


def ksampler(
    sampler_name: str,
    extra_options: Mapping[str, Any] | None = None,
    inpaint_options: Mapping[str, Any] | None = None,
) -> KSAMPLER:
    """The ``KSAMPLER`` running ``comfy.k_diffusion.sampling.sample_<sampler_name>`` (the pack's
    replacement when there is one); dpm_fast / dpm_adaptive get their (sigma_min, sigma_max)
    arguments from the sigmas."""
    if _k_function(sampler_name) is None:
        raise ValueError(f"unknown sampler {sampler_name!r}")
    if sampler_name == "dpm_fast":

        def dpm_fast(
            model: Any,
            noise: torch.Tensor,
            sigmas: torch.Tensor,
            extra_args: Any,
            callback: Any,
            disable: Any,
        ) -> torch.Tensor:
            if len(sigmas) <= 1:
                return noise
            sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
            steps = len(sigmas) - 1
            fn = _k_function("dpm_fast")
            assert fn is not None
            return fn(
                model,
                noise,
                sigma_min,
                sigmas[0],
                steps,
                extra_args=extra_args,
                callback=callback,
                disable=disable,
            )

        return KSAMPLER(dpm_fast, extra_options, inpaint_options)
    if sampler_name == "dpm_adaptive":

        def dpm_adaptive(
            model: Any,
            noise: torch.Tensor,
            sigmas: torch.Tensor,
            extra_args: Any,
            callback: Any,
            disable: Any,
            **options: Any,
        ) -> torch.Tensor:
            if len(sigmas) <= 1:
                return noise
            sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
            fn = _k_function("dpm_adaptive")
            assert fn is not None
            return fn(
                model,
                noise,
                sigma_min,
                sigmas[0],
                extra_args=extra_args,
                callback=callback,
                disable=disable,
                **options,
            )

        return KSAMPLER(dpm_adaptive, extra_options, inpaint_options)
    function = _k_function(sampler_name)
    assert function is not None
    return KSAMPLER(function, extra_options, inpaint_options)


def sampler_object(name: str) -> Sampler:
    """The sampler object for a KSampler ``sampler_name`` (``ddim`` is Euler inpainting with
    fresh noise; ``uni_pc`` / ``uni_pc_bh2`` are UniPC's two variants)."""
    if name == "uni_pc":
        return KSAMPLER(kdiffusion.sample_unipc)
    if name == "uni_pc_bh2":
        return KSAMPLER(kdiffusion.sample_unipc_bh2)
    if name == "ddim":
        return ksampler("euler", inpaint_options={"random": True})
    return ksampler(name)


def sample(
    model: Any,
    noise: torch.Tensor,
    positive: list[list[Any]],
    negative: list[list[Any]],
    cfg: float,
    device: Any,
    sampler: Sampler,
    sigmas: torch.Tensor,
    model_options: Mapping[str, Any] | None = None,
    latent_image: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """``comfy.samplers.sample``: a ``CFGGuider`` over ``model`` runs ``sampler`` (the MODEL's
    own ``model_options`` apply; the argument is accepted for the reference's signature)."""
    guider = lookup("comfy.samplers", "CFGGuider", CFGGuider)(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    if latent_image is None:
        latent_image = torch.zeros_like(noise)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


def trim_sigmas(
    sigmas: torch.Tensor, start_step: int | None, last_step: int | None, force_full_denoise: bool
) -> torch.Tensor | None:
    """KSamplerAdvanced's window: the sigmas up to ``last_step`` (ending at 0 with
    ``force_full_denoise``) from ``start_step`` on, or None when that leaves no step."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas


class KSampler:
    """The reference's ``comfy.samplers.KSampler``: a sampler name + scheduler + steps (and
    ``denoise``) turned into ``.sigmas``, and ``sample(...)`` over them."""

    SCHEDULERS: list[str] = SCHEDULER_NAMES
    SAMPLERS: list[str] = SAMPLER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS: set[str] = set(DISCARD_PENULTIMATE_SIGMA_SAMPLERS)

    def __init__(
        self,
        model: Any,
        steps: int,
        device: Any,
        sampler: str | None = None,
        scheduler: str | None = None,
        denoise: float | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        # Unknown names fall back to the first entry, as in the reference.
        self.scheduler = scheduler if scheduler in self.SCHEDULERS else self.SCHEDULERS[0]
        self.sampler = sampler if sampler in self.SAMPLERS else self.SAMPLERS[0]
        self.set_steps(steps, denoise)
        self.denoise = denoise
        self.model_options = model_options if model_options is not None else {}

    def calculate_sigmas(self, steps: int) -> torch.Tensor:
        discard = self.sampler in self.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas_for = lookup("comfy.samplers", "calculate_sigmas", calculate_sigmas)
        sigmas = sigmas_for(model_sampling_of(self.model), self.scheduler, steps + 1 if discard else steps)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def set_steps(self, steps: int, denoise: float | None = None) -> None:
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            sigmas = self.calculate_sigmas(steps)
        elif denoise <= 0.0:
            sigmas = torch.FloatTensor([])
        else:
            sigmas = self.calculate_sigmas(int(steps / denoise))[-(steps + 1) :]
        self.sigmas = sigmas.to(self.device) if self.device is not None else sigmas

    def sample(
        self,
        noise: torch.Tensor,
        positive: list[list[Any]],
        negative: list[list[Any]],
        cfg: float,
        latent_image: torch.Tensor | None = None,
        start_step: int | None = None,
        last_step: int | None = None,
        force_full_denoise: bool = False,
        denoise_mask: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        disable_pbar: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The sampled latent (VAE space); the input latent when ``start_step`` leaves nothing."""
        trimmed = trim_sigmas(
            self.sigmas if sigmas is None else sigmas, start_step, last_step, force_full_denoise
        )
        if trimmed is None:
            return latent_image if latent_image is not None else torch.zeros_like(noise)
        sigmas = trimmed
        sampler = lookup("comfy.samplers", "sampler_object", sampler_object)(self.sampler)
        run = lookup("comfy.samplers", "sample", sample)
        return run(
            self.model,
            noise,
            positive,
            negative,
            cfg,
            self.device,
            sampler,
            sigmas,
            self.model_options,
            latent_image=latent_image,
            denoise_mask=denoise_mask,
            callback=callback,
            disable_pbar=disable_pbar,
            seed=seed,
        )


def sample_latents(
    model: Any,
    noise: torch.Tensor,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[list[Any]],
    negative: list[list[Any]],
    latent_image: torch.Tensor,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    noise_mask: torch.Tensor | None = None,
    sigmas: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """``comfy.sample.sample``: what the KSampler node runs once its noise is drawn. ``noise_mask``
    is a LATENT's raw ``noise_mask``; ``disable_noise`` is the caller's business (pass zeros)."""
    make = lookup("comfy.samplers", "KSampler", KSampler)
    # The reference would quietly sample with the first name instead; a typo deserves an error.
    if sampler_name not in make.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}")
    if scheduler not in make.SCHEDULERS and sigmas is None:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    options = getattr(model, "model_options", None)
    ks = make(
        model,
        steps=steps,
        device=None,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
        model_options=options,
    )
    return ks.sample(
        noise,
        positive,
        negative,
        cfg=cfg,
        latent_image=latent_image,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        denoise_mask=noise_mask,
        sigmas=sigmas,
        callback=callback,
        disable_pbar=disable_pbar,
        seed=seed,
    )


def sample_custom(
    model: Any,
    noise: torch.Tensor,
    cfg: float,
    sampler: Sampler,
    sigmas: torch.Tensor,
    positive: list[list[Any]],
    negative: list[list[Any]],
    latent_image: torch.Tensor,
    noise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    disable_pbar: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """``comfy.sample.sample_custom``: ``sampler`` over explicit ``sigmas`` (SamplerCustom)."""
    run = lookup("comfy.samplers", "sample", sample)
    options = getattr(model, "model_options", None)
    return run(
        model,
        noise,
        positive,
        negative,
        cfg,
        None,
        sampler,
        sigmas,
        options,
        latent_image=latent_image,
        denoise_mask=noise_mask,
        callback=callback,
        disable_pbar=disable_pbar,
        seed=seed,
    )


__all__ = [
    "KSAMPLER",
    "KSAMPLER_NAMES",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "InpaintDenoiser",
    "KSampler",
    "Sampler",
    "SchedulerHandler",
    "calculate_sigmas",
    "ksampler",
    "model_sampling_of",
    "sample",
    "sample_custom",
    "sample_latents",
    "sampler_object",
    "scheduler_handlers",
    "trim_sigmas",
]
