"""Milliseconds per UNet step: ours beside diffusers' UNet2DConditionModel with the same weights.

    python bench/unet.py [--steps 3] [--no-real] [--device cpu|cuda] [--dtype fp32|fp16|bf16]

Models: tiny SD1- and SDXL-shaped UNets (32/64 channels) and a real-size SD1.5 UNet (random
weights, 64x64 latent, batch 2, 77-token context). After one warm-up call each, ours and
diffusers are called alternately ``--steps`` times and the best time of each is shown (other
processes on a shared machine only ever add time). diffusers is a benchmark reference only and
is never imported by the server. Needs ``pip install diffusers``; runs offline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetConfig, UNetModel, sdxl_adm  # noqa: E402
from tests.plugins.core_nodes.tiny_sd import SD15_UNET, UNET_CONFIGS, diffusers_config  # noqa: E402


def timed_pair(ours: Any, ref: Any, steps: int, device: torch.device) -> tuple[float, float]:
    """Best-of-``steps`` ms for each, calls alternating so load from other processes hits both alike."""

    def once(fn: Any) -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000

    with torch.inference_mode():
        once(ours)
        once(ref)
        pairs = [(once(ours), once(ref)) for _ in range(steps)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def bench(
    name: str, cfg: UNetConfig, batch: int, size: int, steps: int, device: torch.device, dtype: torch.dtype
) -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    ours = UNetModel(cfg).eval().requires_grad_(False)
    dconf = diffusers_config(cfg)
    ldm = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    ref = UNet2DConditionModel(**dconf)
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dconf), strict=True)
    del ldm
    ours.to(device, dtype)
    ref.eval().requires_grad_(False).to(device, dtype)

    x = torch.randn(batch, 4, size, size, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)
    ctx = torch.randn(batch, 77, cfg.context_dim or 0, device=device, dtype=dtype)
    y = None
    kwargs: dict[str, Any] = {}
    if cfg.adm_in_channels is not None:
        pooled = torch.randn(batch, cfg.adm_in_channels - 6 * ADM_SCALAR_DIM, device=device, dtype=dtype)
        y = sdxl_adm(pooled, 1024.0, 1024.0)
        ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch, device=device)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}

    ms_ours, ms_ref = timed_pair(
        lambda: ours(x, t, ctx, y),
        lambda: ref(x, t, encoder_hidden_states=ctx, **kwargs).sample,
        steps,
        device,
    )
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(
        f"{name:<26} {params:8.1f}M  batch {batch} latent {size}x{size}  "
        f"ours {ms_ours:10.1f} ms  diffusers {ms_ref:10.1f} ms  ratio {ms_ours / ms_ref:5.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-real", action="store_true", help="skip the real-size SD1.5 UNet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    print(
        f"torch {torch.__version__}, {device}, {args.dtype}, {torch.get_num_threads()} threads, best of {args.steps}"
    )
    bench("tiny SD1 (32/64 ch)", UNET_CONFIGS["sd1"], 2, 32, max(args.steps, 10), device, dtype)
    bench("tiny SDXL (32/64 ch)", UNET_CONFIGS["sdxl"], 2, 32, max(args.steps, 10), device, dtype)
    if not args.no_real:
        bench("SD1.5 (random weights)", SD15_UNET, 2, 64, args.steps, device, dtype)


if __name__ == "__main__":
    main()
