"""The KSampler plumbing: noise, sigmas, masks, guidance, progress and previews around a sampler.

``run_ksampler`` is what KSampler and KSamplerAdvanced call; it is also the entry point for
tests that drive a toy model satisfying ``contracts.DiffusionModel``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kernel.progress import ProgressBar
from plugins.core_nodes.guidance import Guider
from plugins.core_nodes.sampling.noise import prepare_noise
from plugins.core_nodes.sampling.samplers import sample
from plugins.core_nodes.sampling.schedules import ksampler_sigmas

if TYPE_CHECKING:
    from kernel import Kernel
    from plugins.core_nodes.contracts import DiffusionModel


@dataclass(frozen=True)
class PreviewOptions:
    """Whether to send latent previews, and at most how often (seconds between frames)."""

    enabled: bool = False
    min_interval: float = 0.0


def preview_options(kernel: Kernel | None) -> PreviewOptions:
    """Previews per ``--preview-method`` / ``--preview-interval`` (none without a kernel)."""
    from plugins.core_nodes.options import preview_interval

    if kernel is None:
        return PreviewOptions()
    enabled = kernel.settings.preview_method != "none"
    return PreviewOptions(enabled=enabled, min_interval=preview_interval(kernel))


def prepare_mask(noise_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A LATENT's ``noise_mask`` (``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``) at latent size,
    one channel per latent channel and one item per batch item."""
    mask = noise_mask.float().reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] < shape[0]:
        repeats = -(-shape[0] // mask.shape[0])
        mask = mask.repeat(repeats, 1, 1, 1)
    return mask[: shape[0]]


def select_sigmas(
    model: DiffusionModel,
    scheduler: str,
    sampler_name: str,
    steps: int,
    denoise: float,
    start_step: int | None,
    last_step: int | None,
    force_full_denoise: bool,
) -> torch.Tensor | None:
    """The sigmas to sample over, or None when ``start_step`` leaves nothing to do."""
    sigmas = ksampler_sigmas(model.model_sampling, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas


class _TerminalBar:
    """A one-line ``steps, it/s`` bar on stderr, like the reference's tqdm line."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.perf_counter()

    def update(self, done: int) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = done / elapsed
        filled = int(20 * done / max(self.total, 1))
        bar = "#" * filled + " " * (20 - filled)
        end = "\n" if done >= self.total else ""
        sys.stderr.write(
            f"\r{100 * done // max(self.total, 1):3d}%|{bar}| {done}/{self.total} [{rate:.2f}it/s]{end}"
        )
        sys.stderr.flush()


def run_ksampler(
    model: DiffusionModel,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[list[Any]],
    negative: list[list[Any]],
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    preview: PreviewOptions | None = None,
) -> dict[str, Any]:
    """Sample ``latent`` and return the new LATENT dict (other keys of ``latent`` kept)."""
    latent_image = latent["samples"]
    if disable_noise:
        noise = torch.zeros_like(latent_image, device="cpu")
    else:
        noise = prepare_noise(latent_image, int(seed), latent.get("batch_index"))
    noise_mask = latent.get("noise_mask")
    denoise_mask = prepare_mask(noise_mask, latent_image.shape) if noise_mask is not None else None

    sigmas = select_sigmas(
        model, scheduler, sampler_name, steps, denoise, start_step, last_step, force_full_denoise
    )
    out = dict(latent)
    if sigmas is None:
        out["samples"] = latent_image
        return out

    fmt = model.latent_format
    model_latent = fmt.process_in(latent_image.float())
    guider = Guider(model, positive, negative, cfg, model_latent, denoise_mask)
    total = len(sigmas) - 1
    bar = ProgressBar(total)
    terminal = _TerminalBar(total)
    options = preview or PreviewOptions()
    last_preview = [float("-inf")]

    def callback(step: int, denoised: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        image = None
        now = time.monotonic()
        if options.enabled and (now - last_preview[0] >= options.min_interval or step + 1 >= total_steps):
            image = fmt.preview_image(denoised)
            last_preview[0] = now
        terminal.update(step + 1)
        # Also the per-step interrupt check: update raises Interrupted once /interrupt was called.
        bar.update_absolute(step + 1, total_steps, preview=image)

    samples = sample(
        guider,
        noise,
        sigmas,
        sampler_name,
        int(seed),
        model_latent,
        denoise_mask=denoise_mask,
        callback=callback,
        disable_noise=disable_noise,
        model_sampling=model.model_sampling,
    )
    out["samples"] = fmt.process_out(samples)
    out.pop("downscale_ratio_spacial", None)
    return out


__all__ = ["PreviewOptions", "prepare_mask", "run_ksampler", "select_sigmas"]
