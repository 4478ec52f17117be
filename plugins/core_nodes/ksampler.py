"""The KSampler plumbing: noise, sigmas, masks, guidance, progress and previews around a sampler.

``run_ksampler`` is what KSampler and KSamplerAdvanced call; it is also the entry point for
tests that drive a toy model satisfying ``contracts.DiffusionModel``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kernel.progress import ProgressBar
from plugins.core_nodes.patchpoints import lookup
from plugins.core_nodes.sampler_objects import sample_latents, trim_sigmas
from plugins.core_nodes.sampling.masks import prepare_mask
from plugins.core_nodes.sampling.noise import prepare_noise
from plugins.core_nodes.sampling.schedules import ksampler_sigmas

if TYPE_CHECKING:
    from kernel import Kernel
    from plugins.core_nodes.contracts import DiffusionModel, LatentFormat


@dataclass(frozen=True)
class PreviewOptions:
    """Whether to send latent previews, and at most how often (seconds between frames)."""

    enabled: bool = False
    min_interval: float = 0.0
    # "taesd" decodes x0 with the family's tiny autoencoder (found through find_approx, a
    # vae_approx file-name prefix -> path); anything else is the linear latent->RGB picture.
    method: str = "latent2rgb"
    find_approx: Callable[[str], Path | None] | None = None


def preview_options(kernel: Kernel | None) -> PreviewOptions:
    """Previews per ``--preview-method`` / ``--preview-interval`` (none without a kernel)."""
    from plugins.core_nodes.options import preview_interval

    if kernel is None:
        return PreviewOptions()
    method = str(kernel.settings.preview_method)
    return PreviewOptions(
        enabled=method != "none",
        min_interval=preview_interval(kernel),
        method=method,
        find_approx=lambda prefix: _find_approx(kernel, prefix),
    )


def _find_approx(kernel: Kernel, prefix: str) -> Path | None:
    """The first vae_approx file whose name starts with ``prefix`` (the reference's pick)."""
    models = kernel.models
    if models is None:
        return None
    try:
        name = next((n for n in models.list_names("vae_approx") if n.startswith(prefix)), None)
    except KeyError:
        return None
    found = models.get_full_path("vae_approx", name) if name is not None else None
    return Path(found) if found is not None else None


def _previewer(fmt: LatentFormat, options: PreviewOptions) -> Callable[[torch.Tensor], torch.Tensor]:
    """x0 -> preview pixels: TAESD when asked for and its decoder file is there, else (as the
    reference, "auto" included) the latent format's linear RGB approximation."""
    if options.method == "taesd" and options.find_approx is not None:
        from plugins.core_nodes.models.taesd import taesd_previewer

        taesd = taesd_previewer(fmt, options.find_approx)
        if taesd is not None:
            return taesd
    return fmt.preview_image


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
    """The sigmas ``run_ksampler`` samples over, or None when ``start_step`` leaves nothing to do."""
    sigmas = ksampler_sigmas(model.model_sampling, scheduler, sampler_name, steps, denoise)
    return trim_sigmas(sigmas, start_step, last_step, force_full_denoise)


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


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, int], None]


def step_callback(
    fmt: LatentFormat,
    steps: int,
    preview: PreviewOptions | None = None,
    x0_output: dict[str, Any] | None = None,
) -> StepCallback:
    """The reference's ``latent_preview.prepare_callback``: ``callback(step, x0, x, total_steps)``
    advances the node's progress bar (which is also the interrupt check), writes the terminal
    bar, sends a latent preview when enabled (at most every ``min_interval`` seconds, and on the
    last step) and keeps the latest x0 in ``x0_output["x0"]`` when given."""
    bar = ProgressBar(steps)
    terminal: list[_TerminalBar] = []
    options = preview or PreviewOptions()
    to_image = _previewer(fmt, options) if options.enabled else fmt.preview_image
    last_preview = [float("-inf")]

    def callback(step: int, denoised: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if x0_output is not None:
            x0_output["x0"] = denoised
        image = None
        now = time.monotonic()
        if options.enabled and (now - last_preview[0] >= options.min_interval or step + 1 >= total_steps):
            image = to_image(denoised)
            last_preview[0] = now
        if not terminal:
            terminal.append(_TerminalBar(total_steps))
        terminal[0].update(step + 1)
        # Also the per-step interrupt check: update raises Interrupted once /interrupt was called.
        bar.update_absolute(step + 1, total_steps, preview=image)

    return callback


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
    """Sample ``latent`` and return the new LATENT dict (other keys of ``latent`` kept).

    The noise is drawn here; the sampling itself goes through ``comfy.sample.sample`` (a
    pack's replacement when the compatibility layer is loaded and one was installed, else
    :func:`plugins.core_nodes.sampler_objects.sample_latents`), as the reference's node does.
    """
    latent_image = latent["samples"]
    if disable_noise:
        noise = torch.zeros_like(latent_image, device="cpu")
    else:
        noise = prepare_noise(latent_image, int(seed), latent.get("batch_index"))
    callback = step_callback(model.latent_format, steps, preview)
    run = lookup("comfy.sample", "sample", sample_latents)
    samples = run(
        model,
        noise,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent_image,
        denoise=denoise,
        disable_noise=disable_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        noise_mask=latent.get("noise_mask"),
        callback=callback,
        seed=int(seed),
    )
    out = dict(latent)
    out["samples"] = samples
    out.pop("downscale_ratio_spacial", None)
    return out


__all__ = ["PreviewOptions", "prepare_mask", "run_ksampler", "select_sigmas", "step_callback"]
