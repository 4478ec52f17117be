"""Context windows: the schedules' index lists and the fuse weights written out by hand, the fused
prediction of a toy per-window model, and a guided run of a per-frame toy model that windowing
must leave unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from plugins.core_nodes import context_windows as cw
from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.nodes.context_windows import (
    ContextWindowsManual,
    LTXVContextWindows,
    WanContextWindowsManual,
)

from .toy_guidance import cond, recording_sampler, toy_patcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _handler(schedule: str, length: int, overlap: int, fuse: str = "pyramid", **kw: Any) -> cw.IndexListContextHandler:
    return cw.IndexListContextHandler(
        cw.get_matching_context_schedule(schedule), cw.get_matching_fuse_method(fuse), length, overlap, **kw
    )


def _windows(handler: cw.IndexListContextHandler, frames: int, step: int = 0) -> list[list[int]]:
    handler._step = step
    return handler.context_schedule.func(frames, handler, {})


def test_schedules_give_the_reference_index_lists() -> None:
    r = lambda a, b: list(range(a, b))  # noqa: E731
    # static: every length - overlap = 5 frames; the last window moved back to end at frame 19.
    assert _windows(_handler("standard_static", 8, 3), 20) == [r(0, 8), r(5, 13), r(10, 18), r(12, 20)]
    assert _windows(_handler("batched", 8, 3), 20) == [r(0, 8), r(8, 16), r(16, 20)]
    assert _windows(_handler("standard_static", 8, 3), 8) == [r(0, 8)]
    uniform = _handler("standard_uniform", 8, 2)
    assert _windows(uniform, 20, step=0) == [r(0, 8), r(6, 14), r(12, 20)]
    # Step 1 starts half way (ordered halving 1/2: pad 10); the window wrapping past frame 19 is
    # shifted to end there and a window starting at frame 0 is inserted after it.
    assert _windows(uniform, 20, step=1) == [r(10, 18), r(12, 20), r(0, 8), r(2, 10)]
    looped = _handler("looped_uniform", 8, 2)
    assert _windows(looped, 20, step=1) == [r(10, 18), [16, 17, 18, 19, 0, 1, 2, 3], r(2, 10)]
    assert [cw.ordered_halving(i) for i in range(4)] == [0.0, 0.5, 0.25, 0.75]


def test_fuse_weights() -> None:
    assert cw.create_weights_pyramid(8) == [1, 2, 3, 4, 4, 3, 2, 1]
    assert cw.create_weights_pyramid(7) == [1, 2, 3, 4, 3, 2, 1]
    h = _handler("standard_static", 8, 3, "overlap-linear")
    middle = cw.get_context_weights(8, 20, list(range(5, 13)), h)
    assert middle.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0], abs=1e-6)
    first = cw.get_context_weights(8, 20, list(range(0, 8)), h)
    assert first.tolist() == pytest.approx([1.0] * 5 + [1.0, 0.5, 0.0], abs=1e-6)


def _fused(handler: cw.IndexListContextHandler, frames: int) -> torch.Tensor:
    """The handler's fusion of a toy whose prediction at every frame is its window's first index."""

    def calc(model: Any, conds: Any, x: torch.Tensor, t: torch.Tensor, options: Any) -> list[torch.Tensor]:
        window = options["transformer_options"]["context_window"]
        return [torch.full_like(x, float(window.index_list[0])) for _ in conds]

    x = torch.zeros(frames, 2, 1, 1)
    options = {"transformer_options": {"sample_sigmas": torch.tensor([5.0, 0.0])}}
    return handler.execute(calc, None, [None], x, torch.full((frames,), 5.0), options)[0][:, 0, 0, 0]


def test_weighted_fusion_of_windows() -> None:
    frames = 20
    windows = [list(range(0, 8)), list(range(5, 13)), list(range(10, 18)), list(range(12, 20))]
    pyramid = [1, 2, 3, 4, 4, 3, 2, 1]
    want = []
    for f in range(frames):
        pairs = [(pyramid[w.index(f)], w[0]) for w in windows if f in w]
        want.append(sum(a * b for a, b in pairs) / sum(a for a, _ in pairs))
    got = _fused(_handler("standard_static", 8, 3, causal_window_fix=False), frames)
    assert got.tolist() == pytest.approx(want)
    # relative: running average weighted by 1 - |distance to the window centre| / half width.
    totals = [0.0] * frames
    acc = [0.0] * frames
    for w in windows:
        lo, hi = w[0], w[-1]
        for f in w:
            bias = max(1e-2, 1 - abs(f - (lo + hi) / 2) / ((hi - lo + 1e-2) / 2))
            acc[f] = acc[f] * totals[f] / (totals[f] + bias) + w[0] * bias / (totals[f] + bias)
            totals[f] += bias
    got = _fused(_handler("standard_static", 8, 3, "relative", causal_window_fix=False), frames)
    assert got.tolist() == pytest.approx(acc, rel=1e-5)


def test_causal_anchor_and_retained_latent_frames() -> None:
    seen: list[torch.Tensor] = []

    def calc(model: Any, conds: Any, x: torch.Tensor, t: torch.Tensor, options: Any) -> list[torch.Tensor]:
        seen.append(x[:, 0, 0, 0].clone())
        return [x.clone() for _ in conds]

    x = torch.arange(12.0).reshape(12, 1, 1, 1).expand(12, 2, 1, 1).contiguous()
    handler = _handler("batched", 4, 0, "flat", latent_retain_index_list="0")
    options = {"transformer_options": {"sample_sigmas": torch.tensor([1.0, 0.0])}}
    out = handler.execute(calc, None, [None], x, torch.ones(12), options)[0]
    # Windows after the first get the frame before them in front (stripped from the output);
    # position 0 of every window keeps latent frame 0 (retained).
    assert [s.tolist() for s in seen] == [[0, 1, 2, 3], [0, 4, 5, 6, 7], [0, 8, 9, 10, 11]]
    assert out[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_freenoise_copies_shuffled_frames_forward() -> None:
    noise = torch.arange(20.0).reshape(20, 1)
    cw.apply_freenoise(noise, 0, 8, 3, seed=1)
    frames = noise[:, 0].tolist()
    assert frames[:8] == list(range(8))
    assert sorted(frames[8:13]) == list(range(0, 5))  # window 2's new frames: window 1's first 5
    assert sorted(frames[13:18]) == sorted(frames[5:10])


def test_windowed_guided_run_equals_whole_for_a_per_frame_model() -> None:
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])

    def run(model: Any) -> list[torch.Tensor]:
        guider = CFGGuider(model)
        guider.set_conds(cond(0.3), cond(-0.2))
        guider.set_cfg(3.0)
        outputs: list[tuple[float, torch.Tensor]] = []
        latent = torch.randn(10, 4, 2, 2, generator=torch.Generator().manual_seed(0))
        guider.sample(torch.zeros_like(latent), latent, recording_sampler(outputs), sigmas, seed=0)
        return [o for _, o in outputs]

    base = toy_patcher(0.5)
    whole = run(base)
    for schedule in ("standard_static", "standard_uniform", "batched"):
        (windowed,) = ContextWindowsManual().execute(base, 4, 1, schedule, 1, False, "pyramid", 0, False)
        base.model.sigmas_seen.clear()
        got = run(windowed)
        for a, b in zip(got, whole, strict=True):
            torch.testing.assert_close(a, b)
        assert len(base.model.sigmas_seen) > 2 * len(whole)  # several windows per step


def test_video_nodes_convert_frames_to_latent_frames() -> None:
    model = toy_patcher(0.0)
    (wan,) = WanContextWindowsManual().execute(model, 81, 30, "standard_uniform", 1, False, "pyramid", True, True)
    h = wan.model_options["context_handler"]
    assert (h.context_length, h.context_overlap, h.dim, h.cond_retain_index_list, h.latent_retain_index_list) == (
        21, 7, 2, [0], []
    )
    assert wan.get_wrappers("sampler_sample", "ContextWindows_sampler_sample")
    (ltx,) = LTXVContextWindows().execute(model, 145, 40, "standard_uniform", 1, False, "pyramid", False, True)
    h = ltx.model_options["context_handler"]
    assert (h.context_length, h.context_overlap, h.latent_retain_index_list) == (19, 5, [0])
    assert "context_handler" not in model.model_options
    with pytest.raises(ValueError, match="context_overlap"):
        ContextWindowsManual().execute(model, 4, 4, "standard_static", 1, False, "pyramid", 0, False)
    with pytest.raises(ValueError, match="index list"):
        ContextWindowsManual().execute(model, 4, 1, "standard_static", 1, False, "pyramid", 0, False, "a,b")
