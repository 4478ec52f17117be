"""The reference's extra sampler and scheduler nodes: ``comfy_extras.nodes_advanced_samplers``
(SamplerLCM, SamplerLCMUpscale, SamplerEulerCFGpp) and ``comfy_extras.nodes_optimalsteps``
(OptimalStepsScheduler).

The sampler nodes hand out the reference's ``KSAMPLER`` objects: named samplers through
``ksampler(name, options)`` (so a pack's replacement of ``sample_<name>`` is used), the two
samplers of this module as k-diffusion functions over our sampler context
(:func:`sample_lcm_upscale`, :func:`sample_euler_cfg_pp_alternative`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode
from plugins.core_nodes.nodes.schedulers_extra import _finish, loglinear_interp

if TYPE_CHECKING:
    import torch

    from plugins.core_nodes.sampling.common import SamplerContext

_MODULE = "comfy_extras.nodes_advanced_samplers"
LCM_UPSCALE_METHODS = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]
EULER_CFGPP_VERSIONS = ["regular", "alternative"]

# OptimalSteps' searched noise levels per model family (Pei et al. 2025, "Optimal Stepsize for
# Diffusion Sampling", arXiv:2503.21774), from the authors' published tables.
OPTIMAL_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "FLUX": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001),
    "Wan": (
        1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946,
        0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001,
    ),
    "Chroma": (
        0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9,
        0.881, 0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355,
        0.311, 0.27, 0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001,
    ),
}  # fmt: skip


def upscale_ratios(total_upscale: float, steps: int, upscale_steps: int | None) -> list[float]:
    """The size factor after each of the first steps of :func:`sample_lcm_upscale`: evenly spaced
    from 1 (exclusive) to ``total_upscale`` over ``upscale_steps`` steps (default: about half of
    them, at least one), never more than there are steps."""
    import numpy as np

    count = steps + 1  # the number of sigmas
    n = max(count // 2 + 1, 2) if upscale_steps is None else min(upscale_steps + 1, count + 1)
    return [float(v) for v in np.linspace(1.0, total_upscale, n)[1:]]


def sample_lcm_upscale(
    ctx: SamplerContext,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    total_upscale: float = 2.0,
    upscale_method: str = "bislerp",
    upscale_steps: int | None = None,
) -> torch.Tensor:
    """LCM steps that grow the latent: each step jumps to the x0 estimate, resizes it by the
    next factor of :func:`upscale_ratios` and re-noises it with fresh noise times the next sigma.

    The fresh noise continues the random stream the initial noise was drawn from (the reference
    draws both from torch's global generator after seeding it with the seed), so a seeded run
    is reproducible and equals the reference's on the CPU.
    """
    import torch

    from plugins.core_nodes.nodes.resize import upscale

    ratios = upscale_ratios(total_upscale, len(sigmas) - 1, upscale_steps)
    height, width = x.shape[-2], x.shape[-1]
    generator: torch.Generator | None = None
    if ctx.seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(int(ctx.seed))
        torch.randn(x.shape, dtype=x.dtype, generator=generator)  # the initial noise's draw
    for i in range(len(sigmas) - 1):
        denoised = ctx.denoise(x, sigmas[i])
        ctx.report(i, denoised, x)
        x = denoised
        if i < len(ratios):
            x = upscale(x, round(width * ratios[i]), round(height * ratios[i]), upscale_method, "disabled")
        if sigmas[i + 1] > 0:
            if generator is None:
                fresh = torch.randn_like(x)
            else:
                fresh = torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device)
            x = x + sigmas[i + 1] * fresh
    return x


def sample_euler_cfg_pp_alternative(ctx: SamplerContext, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The "alternative" Euler CFG++ of SamplerEulerCFGpp: an Euler step along
    d = (x - denoised + uncond - denoised) / sigma, i.e. the guided derivative plus the
    unconditional prediction's difference from the guided one."""
    from plugins.core_nodes.sampling.common import to_d

    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised, uncond = ctx.denoise_cfg(x, sigma, "euler_cfg_pp (alternative)")
        ctx.report(i, denoised, x)
        d = to_d(x - denoised + uncond, sigma, denoised)
        x = x + d * (sigmas[i + 1] - sigma)
    return x


class _Sampler(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    CATEGORY = "model/sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    # The reference's schemas name no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


class SamplerLCMUpscale(_Sampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "scale_ratio": ("FLOAT", {"advanced": True, "default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}),
                "scale_steps": ("INT", {"advanced": True, "default": -1, "min": -1, "max": 1000, "step": 1}),
                "upscale_method": ("COMBO", {"multiselect": False, "options": list(LCM_UPSCALE_METHODS)}),
            }
        }

    def get_sampler(self, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import KSAMPLER
        from plugins.core_nodes.sampling.kdiffusion import k_diffusion_sampler

        if upscale_method not in LCM_UPSCALE_METHODS:
            raise ValueError(f"unknown upscale_method {upscale_method!r}; expected one of {LCM_UPSCALE_METHODS}")
        options = {
            "total_upscale": float(scale_ratio),
            "upscale_steps": None if scale_steps < 0 else int(scale_steps),
            "upscale_method": upscale_method,
        }
        return (KSAMPLER(k_diffusion_sampler("lcm_upscale", sample_lcm_upscale), extra_options=options),)



class SamplerLCM(_Sampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def noise(default: float, hi: float, tooltip: str) -> tuple[str, dict[str, Any]]:
            return ("FLOAT", {"default": default, "min": 0.0, "max": hi, "step": 0.01, "tooltip": tooltip})

        return {
            "required": {
                "s_noise": noise(1.0, 64.0, "Multiplier of the re-noising noise at the first step (1: as trained)."),
                "s_noise_end": noise(1.0, 64.0, "Multiplier at the last step; steps between go linearly."),
                "noise_clip_std": noise(0.0, 10.0, "Clamp the noise to this many standard deviations (0: off)."),
            }
        }

    def get_sampler(self, s_noise: float, s_noise_end: float, noise_clip_std: float) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import ksampler

        options = {"s_noise": float(s_noise), "s_noise_end": float(s_noise_end), "noise_clip_std": float(noise_clip_std)}
        return (ksampler("lcm", options),)



class SamplerEulerCFGpp(_Sampler):
    CATEGORY = "experimental"
    EXPERIMENTAL = True
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "version": ("COMBO", {"advanced": True, "multiselect": False, "options": list(EULER_CFGPP_VERSIONS)}),
            }
        }

    def get_sampler(self, version: str) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import KSAMPLER, ksampler
        from plugins.core_nodes.sampling.kdiffusion import k_diffusion_sampler

        if version == "alternative":
            return (KSAMPLER(k_diffusion_sampler("euler_cfg_pp_alternative", sample_euler_cfg_pp_alternative)),)
        if version == "regular":
            return (ksampler("euler_cfg_pp"),)
        raise ValueError(f"unknown version {version!r}; expected one of {EULER_CFGPP_VERSIONS}")



def optimal_steps_sigmas(model_type: str, steps: int, denoise: float = 1.0) -> Any:
    """The OptimalSteps schedule: the family's table (log-linearly stretched when ``steps`` + 1
    differs from its length), the last ``round(steps * denoise)`` steps, ending in 0."""
    try:
        levels: Any = OPTIMAL_NOISE_LEVELS[model_type]
    except KeyError:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(OPTIMAL_NOISE_LEVELS)}") from None
    if steps + 1 != len(levels):
        levels = loglinear_interp(levels, steps + 1)
    return _finish(levels, steps, denoise)


class OptimalStepsScheduler(ClassExecute, CoreNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_optimalsteps"
    CATEGORY = "model/sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model_type": ("COMBO", {"multiselect": False, "options": list(OPTIMAL_NOISE_LEVELS)}),
                "steps": ("INT", {"default": 20, "min": 3, "max": 1000}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, model_type: str, steps: int, denoise: float) -> tuple[Any]:
        return (optimal_steps_sigmas(model_type, steps, denoise),)



NODES: dict[str, tuple[type, str | None]] = {
    "SamplerLCMUpscale": (SamplerLCMUpscale, None),
    "SamplerLCM": (SamplerLCM, None),
    "SamplerEulerCFGpp": (SamplerEulerCFGpp, "SamplerEulerCFG++"),
    "OptimalStepsScheduler": (OptimalStepsScheduler, None),
}
