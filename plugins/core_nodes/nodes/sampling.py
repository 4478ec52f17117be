"""KSampler and KSamplerAdvanced."""

from __future__ import annotations

from typing import Any

from plugins.core_nodes.nodes.common import MAX_SEED, KernelNode
from plugins.core_nodes.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES  # torch-free


def _seed_input() -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})


def _common_inputs() -> dict[str, Any]:
    """The inputs both samplers share, in the order the reference lists them after the seed."""
    return {
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (list(SAMPLER_NAMES),),
        "scheduler": (list(SCHEDULER_NAMES),),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",),
    }


class _Sampler(KernelNode):
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "model/sampling"

    @classmethod
    def _preview(cls) -> Any:
        from plugins.core_nodes.ksampler import preview_options

        return preview_options(cls.KERNEL)


class KSampler(_Sampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "seed": _seed_input(),
                **_common_inputs(),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def sample(
        self,
        model: Any,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: list[Any],
        negative: list[Any],
        latent_image: dict[str, Any],
        denoise: float = 1.0,
    ) -> tuple[dict[str, Any]]:
        from plugins.core_nodes.ksampler import run_ksampler

        out = run_ksampler(
            model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, preview=self._preview(),
        )  # fmt: skip
        return (out,)


class KSamplerAdvanced(_Sampler):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "add_noise": (["enable", "disable"], {"advanced": True}),
                "noise_seed": _seed_input(),
                **_common_inputs(),
                "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000, "advanced": True}),
                "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000, "advanced": True}),
                "return_with_leftover_noise": (["disable", "enable"], {"advanced": True}),
            }
        }

    def sample(
        self,
        model: Any,
        add_noise: str,
        noise_seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: list[Any],
        negative: list[Any],
        latent_image: dict[str, Any],
        start_at_step: int,
        end_at_step: int,
        return_with_leftover_noise: str,
        denoise: float = 1.0,
    ) -> tuple[dict[str, Any]]:
        from plugins.core_nodes.ksampler import run_ksampler

        out = run_ksampler(
            model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise,
            disable_noise=add_noise == "disable",
            start_step=start_at_step,
            last_step=end_at_step,
            force_full_denoise=return_with_leftover_noise != "enable",
            preview=self._preview(),
        )  # fmt: skip
        return (out,)


NODES: dict[str, tuple[type, str | None]] = {
    "KSampler": (KSampler, "KSampler"),
    "KSamplerAdvanced": (KSamplerAdvanced, "KSampler (Advanced)"),
}
