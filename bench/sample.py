"""Seconds per sampling step and in total for the reference's default txt2img workflow.

    python bench/sample.py [--steps 3] [--no-real] [--device cpu|cuda] [--threads N]

The default workflow's nodes in order (load checkpoint, encode the positive and negative
prompts, sample with euler / normal at CFG 8 from an empty latent, decode) on:

* the tiny SD1 and SDXL checkpoints the tests use (written to a temporary folder, loaded through
  ``adapters.load_checkpoint`` like CheckpointLoaderSimple does), at 64x64 pixels;
* a real-size SD1.5 architecture with random weights (UNet 860M, CLIP-L, the 4-level VAE) at
  512x512, built in memory (no 4 GB file is written), sampled for ``--steps`` steps.

Each step is two UNet evaluations (positive and negative) as in the reference. The first step
of a run includes one-off warm-up work, so "per step" is the median of the steps. Figures are
wall-clock on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from plugins.core_nodes.ksampler import run_ksampler  # noqa: E402
from plugins.core_nodes.models import adapters  # noqa: E402
from plugins.core_nodes.models.checkpoint import ModelFamily  # noqa: E402
from plugins.core_nodes.models.clip import CLIP_L, ClipTextModel  # noqa: E402
from plugins.core_nodes.models.text_encoder import ClipEncoder, TextEncoderStack  # noqa: E402
from plugins.core_nodes.models.tokenizer import END_TOKEN, make_tokenizers  # noqa: E402
from plugins.core_nodes.models.unet import UNetModel  # noqa: E402
from plugins.core_nodes.models.vae import VAE, AutoencoderKL, VAEConfig  # noqa: E402
from tests.plugins.core_nodes.tiny_sd import SD15_UNET  # noqa: E402

POSITIVE = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
NEGATIVE = "text, watermark"


class StepClock:
    """Collects the time of every sampling step from the sampler's progress reports."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run_workflow(
    name: str, load: Callable[[], tuple[Any, Any, Any]], size: int, steps: int, device: torch.device
) -> None:
    (model, clip, vae), t_load = timed(load, device)
    (positive, negative), t_text = timed(
        lambda: [[[c, {"pooled_output": p}]] for c, p in (clip.encode(POSITIVE), clip.encode(NEGATIVE))],
        device,
    )
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    clock = StepClock(device)
    inner = model.__call__
    calls = [0]

    def counting(x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        # A step starts with its first (positive) evaluation: two evaluations per step at CFG 8.
        if calls[0] % 2 == 0:
            clock.mark()
        calls[0] += 1
        return inner(x, sigma, cond)

    model_fn: Any = _Wrapped(model, counting)
    sampled, t_sample = timed(
        lambda: run_ksampler(model_fn, 0, steps, 8.0, "euler", "normal", positive, negative, latent), device
    )
    clock.mark()
    image, t_decode = timed(lambda: vae.decode(sampled["samples"]), device)
    per_step = clock.steps()
    total = t_load + t_text + t_sample + t_decode
    print(
        f"{name:<34} {size:>4}px  steps {steps}  "
        f"s/step {statistics.median(per_step):8.3f} (first {per_step[0]:.3f})  "
        f"load {t_load:6.2f}  text {t_text:6.2f}  sample {t_sample:7.2f}  decode {t_decode:6.2f}  "
        f"total {total:7.2f} s  image {tuple(image.shape[1:3])}"
    )


class _Wrapped:
    """The model with its call counted (attributes pass through)."""

    def __init__(self, model: Any, call: Callable[..., torch.Tensor]) -> None:
        self._model = model
        self._call = call

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self._call(x, sigma, cond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def tiny_loader(family: str, folder: Path, device: torch.device) -> Callable[[], tuple[Any, Any, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.plugins.core_nodes import tiny_pipeline

    path = tiny_pipeline.write_checkpoint(folder / f"tiny_{family}.safetensors", family)

    def load() -> tuple[Any, Any, Any]:
        model, clip, vae = adapters.load_checkpoint(path)
        return _to(model, clip, vae, device)

    return load


def _to(model: Any, clip: Any, vae: Any, device: torch.device) -> tuple[Any, Any, Any]:
    model.unet.to(device)
    for m in clip.models.values():
        m.to(device)
    vae.vae.model.to(device)
    return model, clip, vae


def _random(module: torch.nn.Module) -> torch.nn.Module:
    """Fill a meta-built module with small random weights fast (default init of 1B params is slow)."""
    module = module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in**-0.5, generator=g)
    return module.eval().requires_grad_(False)


def real_sd15_loader(device: torch.device) -> Callable[[], tuple[Any, Any, Any]]:
    def load() -> tuple[Any, Any, Any]:
        with torch.device("meta"):
            unet = UNetModel(SD15_UNET)
            clip_model = ClipTextModel(CLIP_L)
            vae_model = AutoencoderKL(VAEConfig())
        unet, clip_model, vae_model = (_random(m) for m in (unet, clip_model, vae_model))
        family = ModelFamily("sd1", "eps", SD15_UNET)
        stack = TextEncoderStack(
            "sd1", make_tokenizers("sd1"), {"l": ClipEncoder(clip_model, None, True, END_TOKEN)}
        )
        model = adapters.DiffusionModel(unet, family)  # type: ignore[arg-type]
        clip = adapters.TextEncoder(stack)
        vae = adapters.Autoencoder(VAE(vae_model))  # type: ignore[arg-type]
        return _to(model, clip, vae, device)

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--no-real", action="store_true", help="skip the real-size SD1.5 run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, fp32, euler/normal, CFG 8"
    )
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for family in ("sd1", "sdxl"):
            run_workflow(
                f"tiny {family} (checkpoint file)",
                tiny_loader(family, Path(tmp), device),
                64,
                args.tiny_steps,
                device,
            )
        if not args.no_real:
            run_workflow("SD1.5 size, random weights", real_sd15_loader(device), 512, args.steps, device)


if __name__ == "__main__":
    main()
