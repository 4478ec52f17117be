"""Sigma schedules must match what the reference's KSampler hands its samplers (1e-6 relative)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from plugins.core_nodes.sampling.betadist import beta_cdf, beta_ppf
from plugins.core_nodes.sampling.schedules import (
    SCHEDULER_NAMES,
    ModelSamplingDiscrete,
    calculate_sigmas,
    ksampler_sigmas,
)

from .golden import GOLDEN_DIR

GOLDEN = json.loads((GOLDEN_DIR / "sigmas.json").read_text())
CASES = GOLDEN["cases"]
MODEL_SAMPLING = ModelSamplingDiscrete()


def _case_id(case: dict) -> str:
    return f"{case['scheduler']}-{case['sampler']}-{case['steps']}-{case['denoise']}"


def _close(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == want or abs(got - want) <= 1e-6 * abs(want)


def test_model_sampling_matches_reference() -> None:
    ref = GOLDEN["model_sampling"]
    ms = ModelSamplingDiscrete(ref["linear_start"], ref["linear_end"], ref["timesteps"])
    assert len(ms.sigmas) == ref["timesteps"]
    assert _close(float(ms.sigma_min), ref["sigma_min"])
    assert _close(float(ms.sigma_max), ref["sigma_max"])


def test_scheduler_names_in_reference_order() -> None:
    seen: list[str] = []
    for case in CASES:
        if case["scheduler"] not in seen:
            seen.append(case["scheduler"])
    assert list(SCHEDULER_NAMES) == seen


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_ksampler_sigmas_match_reference(case: dict) -> None:
    got = ksampler_sigmas(MODEL_SAMPLING, case["scheduler"], case["sampler"], case["steps"], case["denoise"])
    want = case["sigmas"]
    assert got.dtype == torch.float32
    assert len(got) == len(want), (got.tolist(), want)
    for g, w in zip(got.tolist(), want, strict=True):
        assert _close(g, w), (got.tolist(), want)


def test_timestep_and_sigma_are_inverse_on_the_table() -> None:
    ts = torch.tensor([0, 1, 250, 500, 998, 999])
    sig = MODEL_SAMPLING.sigma(ts)
    assert torch.equal(MODEL_SAMPLING.timestep(sig), ts)
    # Fractional timesteps interpolate log-sigma, so they land strictly between neighbours.
    mid = float(MODEL_SAMPLING.sigma(torch.tensor(250.5)))
    assert float(sig[2]) < mid < float(MODEL_SAMPLING.sigmas[251])


def test_denoise_zero_gives_no_steps_and_unknown_scheduler_is_refused() -> None:
    assert len(ksampler_sigmas(MODEL_SAMPLING, "normal", "euler", 10, 0.0)) == 0
    with pytest.raises(ValueError, match="unknown scheduler"):
        calculate_sigmas(MODEL_SAMPLING, "nope", 10)


def test_v_prediction_denoise_formula() -> None:
    ms = ModelSamplingDiscrete(prediction="v")
    x = torch.full((1, 1, 2, 2), 2.0)
    out = torch.full((1, 1, 2, 2), 0.5)
    sigma = torch.tensor([3.0])
    # x * 1/(s^2+1) - v * s/sqrt(s^2+1) with sigma_data = 1
    expected = 2.0 / 10.0 - 0.5 * 3.0 / math.sqrt(10.0)
    assert torch.allclose(ms.calculate_denoised(sigma, out, x), torch.full_like(x, expected))
    eps = ModelSamplingDiscrete()
    assert torch.allclose(eps.calculate_denoised(sigma, out, x), torch.full_like(x, 2.0 - 1.5))
    with pytest.raises(ValueError):
        ModelSamplingDiscrete(prediction="x0")


@pytest.mark.parametrize("q", [0.05, 0.3, 0.5, 0.77, 0.999])
def test_beta_ppf_inverts_cdf(q: float) -> None:
    x = beta_ppf(q, 0.6, 0.6)
    assert abs(beta_cdf(x, 0.6, 0.6) - q) < 1e-12
    # Symmetric distribution: the quantiles mirror around 1/2.
    assert abs(beta_ppf(1 - q, 0.6, 0.6) - (1 - x)) < 1e-12
