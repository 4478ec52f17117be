"""EasyCache / LazyCache: which evaluations are skipped, replayed with the reference's rule written
out here, on models that count their calls (a toy MODEL for LazyCache, the tiny SD1 UNet with
probe wrappers around and inside EasyCache's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.extension import WrappersMP
from plugins.core_nodes.nodes.easycache import EasyCache, LazyCache
from plugins.core_nodes.sampler_objects import KSAMPLER

from . import tiny_pipeline
from .toy_guidance import cond, toy_patcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _euler(steps: list[tuple[float, torch.Tensor, torch.Tensor]]) -> KSAMPLER:
    def run(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any, callback: Any, disable: Any) -> Any:
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
            denoised = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
            steps.append((float(sigma), x.clone(), denoised.clone()))
            x = x + (x - denoised) / sigma * (nxt - sigma)
        return x

    return KSAMPLER(run)


def _sub(t: torch.Tensor) -> torch.Tensor:
    return t[..., ::8, ::8]


def replay(
    calls: list[tuple[float, torch.Tensor]], run: Any, threshold: float, start_t: float, end_t: float,
    learn_before_start: bool = True,
) -> tuple[list[bool], list[torch.Tensor]]:
    """The reference's rule: per call (sigma, x), whether it is skipped and the output it gives.
    ``run(i)`` is the real output of call ``i`` (only asked for the calls that run). EasyCache
    learns nothing before ``start_t`` (its first cond is chosen there); LazyCache does."""
    x_prev = out_prev = norm = rate = None
    total = 0.0
    skipped, outputs = [], []
    diff = None
    for i, (sigma, x) in enumerate(calls):
        if not sigma > end_t or (not learn_before_start and sigma > start_t):
            # Past the end (or EasyCache before its start): run, and the state is left alone.
            skipped.append(False)
            outputs.append(run(i))
            continue
        change = None
        if sigma <= start_t and x_prev is not None:
            change = (_sub(x) - x_prev).abs().mean()
            if norm is not None and rate is not None:
                total += rate * change / norm
                if total < threshold:
                    skipped.append(True)
                    outputs.append(x + diff)
                    continue
                total = 0.0
        out = run(i)
        if norm is not None and change is not None:
            rate = (_sub(out) - out_prev).abs().mean() / change
        diff = out - x
        x_prev, out_prev, norm = _sub(x), _sub(out), out.abs().mean()
        skipped.append(False)
        outputs.append(out)
    return skipped, outputs


def test_lazycache_skips_guided_steps_by_the_rule() -> None:
    model = toy_patcher(0.5)
    (cached,) = LazyCache().execute(model, 0.3, 0.1, 0.95, False)
    sampling = model.model.model_sampling
    sigmas = torch.cat([sampling.sigmas.flip(0)[::40], torch.zeros(1)]).float()
    guider = CFGGuider(cached)
    guider.set_conds(cond(0.3), cond(-0.2))
    guider.set_cfg(1.0)
    steps: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    model.model.sigmas_seen.clear()
    guider.sample(torch.randn_like(latent), latent, _euler(steps), sigmas, seed=0)
    model_calls = len(model.model.sigmas_seen)

    plain = CFGGuider(model)
    plain.set_conds(cond(0.3), cond(-0.2))
    plain.set_cfg(1.0)
    plain.prepare(torch.zeros_like(latent))

    def run(i: int) -> torch.Tensor:
        sigma, x, _ = steps[i]
        return plain(x, torch.tensor([sigma]))

    start_t, end_t = sampling.percent_to_sigma(0.1), sampling.percent_to_sigma(0.95)
    skipped, outputs = replay([(s, x) for s, x, _ in steps], run, 0.3, start_t, end_t)
    assert 0 < sum(skipped) < len(steps) - 2
    assert model_calls == len(steps) - sum(skipped)  # the model really was not called
    for (_, _, got), want in zip(steps, outputs, strict=True):
        torch.testing.assert_close(got, want)
    assert guider.last_step_cache.total_steps_skipped == sum(skipped)
    assert "easycache" in cached.model_options["transformer_options"]


def test_easycache_skips_unet_calls_by_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "sd1.safetensors"
    save_file(tiny_pipeline.checkpoint_dict("sd1"), str(path))
    model, clip, _ = adapters.load_checkpoint(path)
    calls: list[tuple[float, torch.Tensor]] = []
    ran: list[torch.Tensor] = []
    given: list[torch.Tensor] = []

    def outer(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        options = args[-1]
        calls.append((float(options["sigmas"].reshape(-1)[0]), args[0].clone()))
        out = executor(*args, **kwargs)
        given.append(out.clone())
        return out

    def inner(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = executor(*args, **kwargs)
        ran.append(out.clone())
        return out

    probed = model.clone()
    probed.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "a_outer", outer)
    (cached,) = EasyCache().execute(probed, 0.25, 0.1, 0.95, False)
    cached.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "z_inner", inner)
    text, pooled = clip.encode("a fox")
    guider = CFGGuider(cached)
    guider.set_conds([[text, {"pooled_output": pooled}]], [[text * 0, {"pooled_output": pooled}]])
    guider.set_cfg(1.0)
    sampling = model.model_sampling
    sigmas = torch.cat([sampling.sigmas.flip(0)[::50], torch.zeros(1)]).float()
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    guider.sample(torch.randn_like(latent), latent, _euler([]), sigmas, seed=0)

    start_t, end_t = sampling.percent_to_sigma(0.1), sampling.percent_to_sigma(0.95)
    it = iter(ran)
    skipped, outputs = replay(calls, lambda i: next(it), 0.25, start_t, end_t, learn_before_start=False)
    assert 0 < sum(skipped) < len(calls) - 2
    assert len(ran) == len(calls) - sum(skipped)  # the network ran only for the calls kept
    for got, want in zip(given, outputs, strict=True):
        torch.testing.assert_close(got, want)
