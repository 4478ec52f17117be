"""The reference's custom-sampling nodes (``comfy_extras.nodes_custom_sampler``).

SAMPLER, SIGMAS, NOISE and GUIDER values are the reference's objects (``KSAMPLER``, a 1-D sigma
tensor, an object with ``seed`` and ``generate_noise(latent)``, a ``CFGGuider``), built from
:mod:`plugins.core_nodes.sampler_objects`, so packs that make or consume them interoperate and
SamplerCustom with KSamplerSelect + BasicScheduler gives the KSampler node's latent.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import MAX_SEED, KernelNode
from plugins.core_nodes.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES  # torch-free

_MODULE = "comfy_extras.nodes_custom_sampler"


def _float(
    default: float, lo: float, hi: float, step: float = 0.01, **extra: Any
) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": False, **extra})


def _advanced(default: float, hi: float = 100.0) -> tuple[str, dict[str, Any]]:
    return _float(default, 0.0, hi, advanced=True)


def _seed() -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})


def _cfg() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def _model_sampling(model: Any) -> Any:
    from plugins.core_nodes.sampler_objects import model_sampling_of

    return model_sampling_of(model)


class _Node(KernelNode):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = _MODULE
    # The reference's schemas for these nodes name no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


# --- schedulers -----------------------------------------------------------------------------


# The inputs the sigma-schedule nodes share, with the reference's defaults and limits (fresh
# dicts per call: INPUT_TYPES results must not share mutable options).
def _steps() -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": 20, "min": 1, "max": 10000})


def _sigma_range() -> dict[str, Any]:
    """``sigma_max`` / ``sigma_min`` as the table schedulers take them (SD1/SDXL's range)."""
    return {"sigma_max": _advanced(14.614642, 5000.0), "sigma_min": _advanced(0.0291675, 5000.0)}


class _Scheduler(_Node):
    """A node that outputs a sigma schedule."""

    CATEGORY = "model/sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"


class BasicScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "scheduler": (list(SCHEDULER_NAMES),),
                "steps": _steps(),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, model: Any, scheduler: str, steps: int, denoise: float) -> tuple[Any]:
        import torch

        from plugins.core_nodes.sampler_objects import calculate_sigmas

        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.FloatTensor([]),)
            total = int(steps / denoise)
        sigmas = calculate_sigmas(_model_sampling(model), scheduler, total).cpu()
        return (sigmas[-(steps + 1) :],)


class KarrasScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": _steps(),
                **_sigma_range(),
                "rho": _advanced(7.0),
            }
        }

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any]:
        from plugins.core_nodes.sampling.kdiffusion import get_sigmas_karras

        return (get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho),)


class ExponentialScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": _steps(),
                **_sigma_range(),
            }
        }

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float) -> tuple[Any]:
        from plugins.core_nodes.sampling.kdiffusion import get_sigmas_exponential

        return (get_sigmas_exponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max),)


class PolyexponentialScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": _steps(),
                **_sigma_range(),
                "rho": _advanced(1.0),
            }
        }

    def get_sigmas(self, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any]:
        from plugins.core_nodes.sampling.kdiffusion import get_sigmas_polyexponential

        return (get_sigmas_polyexponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho),)


class VPScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": _steps(),
                "beta_d": _advanced(19.9, 5000.0),
                "beta_min": _advanced(0.1, 5000.0),
                "eps_s": _float(0.001, 0.0, 1.0, 0.0001, advanced=True),
            }
        }

    def get_sigmas(self, steps: int, beta_d: float, beta_min: float, eps_s: float) -> tuple[Any]:
        from plugins.core_nodes.sampling.kdiffusion import get_sigmas_vp

        return (get_sigmas_vp(n=steps, beta_d=beta_d, beta_min=beta_min, eps_s=eps_s),)


class SDTurboScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "steps": ("INT", {"default": 1, "min": 1, "max": 10}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, model: Any, steps: int, denoise: float) -> tuple[Any]:
        import torch

        # SD-Turbo was distilled on every 100th timestep: take ``steps`` of them from the top
        # (or from lower down, for ``denoise`` < 1).
        start = 10 - int(10 * denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start : start + steps]
        sigmas = _model_sampling(model).sigma(timesteps)
        return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


class BetaSamplingScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "steps": _steps(),
                "alpha": _advanced(0.6, 50.0),
                "beta": _advanced(0.6, 50.0),
            }
        }

    def get_sigmas(self, model: Any, steps: int, alpha: float, beta: float) -> tuple[Any]:
        from plugins.core_nodes.sampling.schedules import beta_scheduler

        return (beta_scheduler(_model_sampling(model), steps, alpha=alpha, beta=beta),)


class LaplaceScheduler(_Scheduler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "steps": _steps(),
                **_sigma_range(),
                "mu": _float(0.0, -10.0, 10.0, 0.1, advanced=True),
                "beta": _float(0.5, 0.0, 10.0, 0.1, advanced=True),
            }
        }

    def get_sigmas(
        self, steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float
    ) -> tuple[Any]:
        import torch

        # Log-sigma follows a Laplace(mu, beta) quantile ramp (Tong et al. 2024), clamped to range.
        x = torch.linspace(0, 1, steps)
        lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
        sigmas = torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)
        return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


# --- sigmas ---------------------------------------------------------------------------------


class SplitSigmas(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",), "step": ("INT", {"default": 0, "min": 0, "max": 10000})}}

    def get_sigmas(self, sigmas: Any, step: int) -> tuple[Any, Any]:
        return (sigmas[: step + 1], sigmas[step:])


class SplitSigmasDenoise(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "sigmas": ("SIGMAS",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, sigmas: Any, denoise: float) -> tuple[Any, Any]:
        steps = max(sigmas.shape[-1] - 1, 0)
        total = round(steps * denoise)
        # As in the reference, denoise 0 leaves high_sigmas empty ([:-0]).
        return (sigmas[:-total], sigmas[-(total + 1) :])


class FlipSigmas(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",)}}

    def get_sigmas(self, sigmas: Any) -> tuple[Any]:
        if len(sigmas) == 0:
            return (sigmas,)
        sigmas = sigmas.flip(0)
        # A schedule that now starts at 0 would divide by zero in the samplers.
        if sigmas[0] == 0:
            sigmas[0] = 0.0001
        return (sigmas,)


class SetFirstSigma(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "set_first_sigma"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("SIGMAS",), "sigma": _float(136.0, 0.0, 20000.0, 0.001)}}

    def set_first_sigma(self, sigmas: Any, sigma: float) -> tuple[Any]:
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return (sigmas,)


class SamplingPercentToSigma(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("FLOAT",)
    RETURN_NAMES = ("sigma_value",)
    FUNCTION = "get_sigma"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "sampling_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}),
                "return_actual_sigma": ("BOOLEAN", {"default": False}),
            }
        }

    def get_sigma(self, model: Any, sampling_percent: float, return_actual_sigma: bool) -> tuple[float]:
        ms = _model_sampling(model)
        sigma = float(ms.percent_to_sigma(sampling_percent))
        if return_actual_sigma:
            # The 0 % / 100 % sentinels become the schedule's real ends.
            if sampling_percent == 0.0:
                sigma = float(ms.sigma_max)
            elif sampling_percent == 1.0:
                sigma = float(ms.sigma_min)
        return (sigma,)


class ManualSigmas(_Node):
    CATEGORY = "model/sampling/sigmas"
    EXPERIMENTAL = True  # the reference's flag: the frontend badges the node
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sigmas": ("STRING", {"default": "1, 0.5", "multiline": False})}}

    def get_sigmas(self, sigmas: str) -> tuple[Any]:
        import torch

        # Every number in the text, whatever separates them.
        return (torch.FloatTensor([float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", sigmas)]),)


class ExtendIntermediateSigmas(_Node):
    CATEGORY = "model/sampling/sigmas"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "sigmas": ("SIGMAS",),
                "steps": ("INT", {"default": 2, "min": 1, "max": 100}),
                "start_at_sigma": _float(-1.0, -1.0, 20000.0),
                "end_at_sigma": _float(12.0, 0.0, 20000.0),
                "spacing": (["linear", "cosine", "sine"],),
            }
        }

    def extend(
        self, sigmas: Any, steps: int, start_at_sigma: float, end_at_sigma: float, spacing: str
    ) -> tuple[Any]:
        import torch

        if start_at_sigma < 0:
            start_at_sigma = float("inf")
        # Each selected step is split into ``steps`` sub-steps; the names follow the reference
        # ("cosine" eases out, "sine" eases in).
        ramps = {
            "linear": lambda t: t,
            "cosine": lambda t: torch.sin(t * math.pi / 2),
            "sine": lambda t: 1 - torch.cos(t * math.pi / 2),
        }
        fractions = ramps[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
        extended: list[float] = []
        for i in range(len(sigmas) - 1):
            high, low = sigmas[i], sigmas[i + 1]
            extended.append(float(high))
            if end_at_sigma <= high <= start_at_sigma:
                extended.extend((fractions * (low - high) + high).tolist())
        if len(sigmas) > 0:
            extended.append(float(sigmas[-1]))
        return (torch.FloatTensor(extended),)


# --- samplers -------------------------------------------------------------------------------


class KSamplerSelect(_Node):
    CATEGORY = "model/sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"sampler_name": (list(SAMPLER_NAMES),)}}

    def get_sampler(self, sampler_name: str) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import sampler_object

        return (sampler_object(sampler_name),)


class _OptionSampler(_Node):
    """A sampler node: ``ksampler(name, extra_options)`` from its inputs."""

    CATEGORY = "model/sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    def _make(self, name: str, **options: Any) -> tuple[Any]:
        from plugins.core_nodes.sampler_objects import ksampler

        return (ksampler(name, options),)


def _device_name(name: str, noise_device: str) -> str:
    # The *_gpu variants draw their Brownian tree on the latent's device.
    return name if noise_device == "cpu" else f"{name}_gpu"


class SamplerEulerAncestral(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _advanced(1.0), "s_noise": _advanced(1.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[Any]:
        return self._make("euler_ancestral", eta=eta, s_noise=s_noise)


class SamplerEulerAncestralCFGPP(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0, 0.0, 1.0), "s_noise": _float(1.0, 0.0, 10.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[Any]:
        return self._make("euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise)


class SamplerLMS(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"order": ("INT", {"advanced": True, "default": 4, "min": 1, "max": 100})}}

    def get_sampler(self, order: int) -> tuple[Any]:
        return self._make("lms", order=order)


class SamplerDPMPP_2S_Ancestral(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"eta": _float(1.0, 0.0, 100.0), "s_noise": _float(1.0, 0.0, 100.0)}}

    def get_sampler(self, eta: float, s_noise: float) -> tuple[Any]:
        return self._make("dpmpp_2s_ancestral", eta=eta, s_noise=s_noise)


class SamplerDPMPP_SDE(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "eta": _advanced(1.0),
                "s_noise": _advanced(1.0),
                "r": _advanced(0.5),
                "noise_device": (["gpu", "cpu"], {"advanced": True}),
            }
        }

    def get_sampler(self, eta: float, s_noise: float, r: float, noise_device: str) -> tuple[Any]:
        return self._make(_device_name("dpmpp_sde", noise_device), eta=eta, s_noise=s_noise, r=r)


class SamplerDPMPP_2M_SDE(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "solver_type": (["midpoint", "heun"],),
                "eta": _advanced(1.0),
                "s_noise": _advanced(1.0),
                "noise_device": (["gpu", "cpu"], {"advanced": True}),
            }
        }

    def get_sampler(self, solver_type: str, eta: float, s_noise: float, noise_device: str) -> tuple[Any]:
        name = _device_name("dpmpp_2m_sde", noise_device)
        return self._make(name, eta=eta, s_noise=s_noise, solver_type=solver_type)


class SamplerDPMPP_3M_SDE(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "eta": _advanced(1.0),
                "s_noise": _advanced(1.0),
                "noise_device": (["gpu", "cpu"], {"advanced": True}),
            }
        }

    def get_sampler(self, eta: float, s_noise: float, noise_device: str) -> tuple[Any]:
        return self._make(_device_name("dpmpp_3m_sde", noise_device), eta=eta, s_noise=s_noise)


class SamplerDPMAdaptative(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "order": ("INT", {"advanced": True, "default": 3, "min": 2, "max": 3}),
                "rtol": _advanced(0.05),
                "atol": _advanced(0.0078),
                "h_init": _advanced(0.05),
                "pcoeff": _advanced(0.0),
                "icoeff": _advanced(1.0),
                "dcoeff": _advanced(0.0),
                "accept_safety": _advanced(0.81),
                "eta": _advanced(0.0),
                "s_noise": _advanced(1.0),
            }
        }

    def get_sampler(self, **options: Any) -> tuple[Any]:
        return self._make("dpm_adaptive", **options)


class SamplerSEEDS2(_OptionSampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "solver_type": (["phi_1", "phi_2"],),
                "eta": _advanced(1.0),
                "s_noise": _advanced(1.0),
                "r": _float(0.5, 0.01, 1.0, advanced=True),
            }
        }

    def get_sampler(self, solver_type: str, eta: float, s_noise: float, r: float) -> tuple[Any]:
        return self._make("seeds_2", eta=eta, s_noise=s_noise, r=r, solver_type=solver_type)


# --- noise ----------------------------------------------------------------------------------


class RandomNoiseSource:
    """The reference's ``Noise_RandomNoise``: KSampler's noise for ``seed`` (and batch indices)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def generate_noise(self, input_latent: dict[str, Any]) -> Any:
        from plugins.core_nodes.sampling.noise import prepare_noise

        return prepare_noise(input_latent["samples"], int(self.seed), input_latent.get("batch_index"))


class EmptyNoiseSource:
    """The reference's ``Noise_EmptyNoise``: zeros (sampling a latent that is already noisy)."""

    seed = 0

    def generate_noise(self, input_latent: dict[str, Any]) -> Any:
        import torch

        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


class RandomNoise(_Node):
    CATEGORY = "model/sampling/noise"
    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"noise_seed": _seed()}}

    def get_noise(self, noise_seed: int) -> tuple[Any]:
        return (RandomNoiseSource(noise_seed),)


class DisableNoise(_Node):
    CATEGORY = "model/sampling/noise"
    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def get_noise(self) -> tuple[Any]:
        return (EmptyNoiseSource(),)


class AddNoise(_Node):
    CATEGORY = "model/sampling/noise"
    EXPERIMENTAL = True  # the reference's flag: the frontend badges the node
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "add_noise"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "noise": ("NOISE",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            }
        }

    def add_noise(
        self, model: Any, noise: Any, sigmas: Any, latent_image: dict[str, Any]
    ) -> tuple[dict[str, Any]]:
        import torch

        if len(sigmas) == 0:
            return (latent_image,)
        samples = latent_image["samples"]
        noisy = noise.generate_noise(latent_image)
        ms = _model_sampling(model)
        fmt = model.latent_format
        # The noise level of the whole span the sigmas cover (the first one for a single sigma).
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        if torch.count_nonzero(samples) > 0:
            samples = fmt.process_in(samples)
        noisy = fmt.process_out(ms.noise_scaling(scale, noisy, samples))
        out = dict(latent_image)
        out["samples"] = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
        return (out,)


# --- guiders --------------------------------------------------------------------------------


class BasicGuider(_Node):
    CATEGORY = "model/sampling/guiders"
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "conditioning": ("CONDITIONING",)}}

    def get_guider(self, model: Any, conditioning: list[Any]) -> tuple[Any]:
        from plugins.core_nodes.guidance import CFGGuider

        guider = CFGGuider(model)
        guider.inner_set_conds({"positive": conditioning})
        return (guider,)


class CFGGuider(_Node):
    CATEGORY = "model/sampling/guiders"
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "cfg": _cfg(),
            }
        }

    def get_guider(self, model: Any, positive: list[Any], negative: list[Any], cfg: float) -> tuple[Any]:
        from plugins.core_nodes.guidance import CFGGuider as Guider

        guider = Guider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


class DualCFGGuider(_Node):
    CATEGORY = "model/sampling/guiders"
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "cond1": ("CONDITIONING",),
                "cond2": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "cfg_conds": _cfg(),
                "cfg_cond2_negative": _cfg(),
                "style": (["regular", "nested"],),
            }
        }

    def get_guider(
        self,
        model: Any,
        cond1: list[Any],
        cond2: list[Any],
        negative: list[Any],
        cfg_conds: float,
        cfg_cond2_negative: float,
        style: str,
    ) -> tuple[Any]:
        from plugins.core_nodes.guidance import DualCFGGuider as Guider

        guider = Guider(model)
        guider.set_conds(cond1, cond2, negative)
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return (guider,)


# --- sampling -------------------------------------------------------------------------------


def _denoised_output(latent: dict[str, Any], x0: dict[str, Any], fmt: Any) -> dict[str, Any]:
    out = dict(latent)
    out["samples"] = fmt.process_out(x0["x0"].cpu())
    return out


class SamplerCustom(_Node):
    CATEGORY = "model/sampling/custom"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "add_noise": ("BOOLEAN", {"advanced": True, "default": True}),
                "noise_seed": _seed(),
                "cfg": _cfg(),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            }
        }

    def sample(
        self,
        model: Any,
        add_noise: bool,
        noise_seed: int,
        cfg: float,
        positive: list[Any],
        negative: list[Any],
        sampler: Any,
        sigmas: Any,
        latent_image: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from plugins.core_nodes.ksampler import preview_options, step_callback
        from plugins.core_nodes.patchpoints import lookup
        from plugins.core_nodes.sampler_objects import sample_custom

        latent = dict(latent_image)
        latent.pop("downscale_ratio_spacial", None)
        noise = (RandomNoiseSource(noise_seed) if add_noise else EmptyNoiseSource()).generate_noise(latent)
        x0: dict[str, Any] = {}
        callback = step_callback(model.latent_format, sigmas.shape[-1] - 1, preview_options(self.KERNEL), x0)
        run = lookup("comfy.sample", "sample_custom", sample_custom)
        samples = run(
            model,
            noise,
            cfg,
            sampler,
            sigmas,
            positive,
            negative,
            latent["samples"],
            noise_mask=latent.get("noise_mask"),
            callback=callback,
            seed=noise_seed,
        )
        out = dict(latent)
        out["samples"] = samples
        denoised = _denoised_output(latent, x0, model.latent_format) if "x0" in x0 else out
        return (out, denoised)


class SamplerCustomAdvanced(_Node):
    CATEGORY = "model/sampling/custom"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "noise": ("NOISE",),
                "guider": ("GUIDER",),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            }
        }

    def sample(
        self, noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from plugins.core_nodes.ksampler import preview_options, step_callback

        latent = dict(latent_image)
        latent.pop("downscale_ratio_spacial", None)
        fmt = guider.model_patcher.latent_format
        x0: dict[str, Any] = {}
        callback = step_callback(fmt, sigmas.shape[-1] - 1, preview_options(self.KERNEL), x0)
        samples = guider.sample(
            noise.generate_noise(latent),
            latent["samples"],
            sampler,
            sigmas,
            denoise_mask=latent.get("noise_mask"),
            callback=callback,
            seed=noise.seed,
        )
        out = dict(latent)
        out["samples"] = samples
        denoised = _denoised_output(latent, x0, fmt) if "x0" in x0 else out
        return (out, denoised)


NODES: dict[str, tuple[type, str | None]] = {
    "SamplerCustom": (SamplerCustom, None),
    "BasicScheduler": (BasicScheduler, None),
    "KarrasScheduler": (KarrasScheduler, None),
    "ExponentialScheduler": (ExponentialScheduler, None),
    "PolyexponentialScheduler": (PolyexponentialScheduler, None),
    "VPScheduler": (VPScheduler, None),
    "SDTurboScheduler": (SDTurboScheduler, None),
    "BetaSamplingScheduler": (BetaSamplingScheduler, None),
    "LaplaceScheduler": (LaplaceScheduler, None),
    "KSamplerSelect": (KSamplerSelect, None),
    "SamplerEulerAncestral": (SamplerEulerAncestral, None),
    "SamplerEulerAncestralCFGPP": (SamplerEulerAncestralCFGPP, "SamplerEulerAncestralCFG++"),
    "SamplerLMS": (SamplerLMS, None),
    "SamplerDPMPP_3M_SDE": (SamplerDPMPP_3M_SDE, None),
    "SamplerDPMPP_2M_SDE": (SamplerDPMPP_2M_SDE, None),
    "SamplerDPMPP_SDE": (SamplerDPMPP_SDE, None),
    "SamplerDPMPP_2S_Ancestral": (SamplerDPMPP_2S_Ancestral, None),
    "SamplerDPMAdaptative": (SamplerDPMAdaptative, None),
    "SplitSigmas": (SplitSigmas, None),
    "SplitSigmasDenoise": (SplitSigmasDenoise, None),
    "FlipSigmas": (FlipSigmas, None),
    "SetFirstSigma": (SetFirstSigma, None),
    "ManualSigmas": (ManualSigmas, None),
    "ExtendIntermediateSigmas": (ExtendIntermediateSigmas, None),
    "SamplerSEEDS2": (SamplerSEEDS2, None),
    "SamplingPercentToSigma": (SamplingPercentToSigma, None),
    "CFGGuider": (CFGGuider, "CFG Guider"),
    "BasicGuider": (BasicGuider, "Basic Guider"),
    "DualCFGGuider": (DualCFGGuider, "Dual CFG Guider"),
    "RandomNoise": (RandomNoise, None),
    "DisableNoise": (DisableNoise, None),
    "AddNoise": (AddNoise, None),
    "SamplerCustomAdvanced": (SamplerCustomAdvanced, None),
}
