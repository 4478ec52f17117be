"""Area conditioning blends as the reference's: each area entry is evaluated on the latent cut to
its area, weighted by strength times a mask whose borders inside the latent fade in linearly over
``rr = min(8, side // 4)`` latent pixels (the t-th pixel from the border weighs ``(t + 1) / rr``),
and every prompt's weighted outputs are summed over the latent and divided by the summed weights.

The expected latent is worked out here by hand, independently of the sampler, for a full-image
prompt plus two overlapping areas (one in pixels, one in percent) against a full negative prompt;
the node path is ConditioningSetArea / ConditioningSetAreaPercentage / ConditioningCombine and a
one-step Euler KSampler, whose result is the guided prediction at the first sigma.
"""

from __future__ import annotations

from typing import Any

import torch

from plugins.core_nodes.nodes.conditioning import (
    ConditioningCombine,
    ConditioningSetArea,
    ConditioningSetAreaPercentage,
)
from plugins.core_nodes.nodes.sampling import KSampler
from plugins.core_nodes.sampling.noise import prepare_noise

from .toy_stack import ToyModel

SEED = 7
CFG = 3.0
LATENT = torch.zeros(1, 4, 16, 24)  # a 128 x 192 image


class CropAwareModel(ToyModel):
    """The toy denoiser plus a term that depends on the whole input it is given (its spatial
    mean), so an entry evaluated on the full latent and cut afterwards would give other numbers
    than one evaluated on its area."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return super().__call__(x, sigma, cond) + 0.1 * x.mean(dim=(2, 3), keepdim=True)


def text(value: float) -> list[list[Any]]:
    return [[torch.full((1, 77, 8), value), {"pooled_output": None}]]


def by_hand(x: torch.Tensor, sigma: float, value: float) -> torch.Tensor:
    """CropAwareModel's prediction for input ``x`` and a text of ``value``, written out."""
    return x / (1 + sigma**2) + 0.1 * torch.sin(x) + 1.0 * value + 0.1 * x.mean(dim=(2, 3), keepdim=True)


def faded_weight(
    h: int, w: int, y: int, x: int, strength: float, height: int, width: int, fade: bool = True
) -> torch.Tensor:
    """The weight of an area entry over its own ``h x w`` pixels (``fade`` False: hard edges)."""

    def ramp(size: int, start: int, full: int) -> list[float]:
        rr = min(8, size // 4) if fade else 0
        out = []
        for i in range(size):
            factor = 1.0
            if start != 0 and i < rr:  # the near border is inside the latent
                factor *= (i + 1) / rr
            if start + size < full and i >= size - rr:  # so is the far one
                factor *= (size - i) / rr
            out.append(factor)
        return out

    rows = torch.tensor(ramp(h, y, height)).reshape(h, 1)
    cols = torch.tensor(ramp(w, x, width)).reshape(1, w)
    return strength * rows * cols


def blend(
    x: torch.Tensor, sigma: float, full: float, areas: list[tuple[Any, ...]], fade: bool = True
) -> torch.Tensor:
    """One prompt's prediction: the full-image entry (weight 1) and each ``(area, strength,
    text value)`` entry over its area, averaged by weight."""
    height, width = x.shape[-2:]
    total = by_hand(x, sigma, full)
    weights = torch.ones_like(x)
    for (h, w, y, x0), strength, value in areas:
        region = (slice(None), slice(None), slice(y, y + h), slice(x0, x0 + w))
        weight = faded_weight(h, w, y, x0, strength, height, width, fade)
        total[region] += by_hand(x[region], sigma, value) * weight
        weights[region] += weight
    return total / weights


def test_two_overlapping_areas_and_a_full_prompt_blend_as_the_reference() -> None:
    # Area B, in pixels: 96 x 64 at (32, 16) -> latent (h 8, w 12, y 2, x 4); every border is
    # inside the latent. Area C, in percent: the bottom-right quarter -> (8, 12, 8, 12); its
    # bottom and right borders are the latent's edges. They overlap on rows 8-9, columns 12-15.
    (area_b,) = ConditioningSetArea().append(text(2.0), 96, 64, 32, 16, 0.7)
    (area_c,) = ConditioningSetAreaPercentage().append(text(-1.5), 0.5, 0.5, 0.5, 0.5, 1.3)
    (positive,) = ConditioningCombine().combine(text(0.5), area_b)
    (positive,) = ConditioningCombine().combine(positive, area_c)
    negative = text(-0.25)

    model = CropAwareModel(bias=1.0)
    latent = {"samples": LATENT}
    out = KSampler().sample(model, SEED, 1, CFG, "euler", "normal", positive, negative, latent, 1.0)[0]["samples"]

    sampling = model.model_sampling
    sigma = sampling.sigma_max
    x = sampling.noise_scaling(sigma.reshape(1), prepare_noise(LATENT, SEED), LATENT, True)
    b: tuple[Any, ...] = ((8, 12, 2, 4), 0.7)
    c: tuple[Any, ...] = ((8, 12, 8, 12), 1.3)
    cond = blend(x, float(sigma), 0.5, [(*b, 2.0), (*c, -1.5)])
    # The negative gets an entry for each positive area, with the area's weights and its own
    # text, so CFG compares like with like there (the reference's counterpart areas).
    uncond = blend(x, float(sigma), -0.25, [(*b, -0.25), (*c, -0.25)])
    expected = uncond + CFG * (cond - uncond)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # The comparison can fail: hard-edged areas give other numbers.
    hard_cond = blend(x, float(sigma), 0.5, [(*b, 2.0), (*c, -1.5)], fade=False)
    hard_uncond = blend(x, float(sigma), -0.25, [(*b, -0.25), (*c, -0.25)], fade=False)
    assert not torch.allclose(out, hard_uncond + CFG * (hard_cond - hard_uncond), atol=1e-3)


def test_an_area_is_evaluated_on_its_own_crop() -> None:
    """A lone area entry (strength 1) covering the left half: where no full-image entry
    competes its prediction is exactly the model run on the cut latent."""
    (left,) = ConditioningSetAreaPercentage().append(text(1.0), 0.5, 1.0, 0.0, 0.0, 1.0)
    model = CropAwareModel(bias=1.0)
    out = KSampler().sample(model, SEED, 1, 1.0, "euler", "normal", left, text(0.0), {"samples": LATENT}, 1.0)[0]
    sampling = model.model_sampling
    sigma = sampling.sigma_max
    x = sampling.noise_scaling(sigma.reshape(1), prepare_noise(LATENT, SEED), LATENT, True)
    crop = x[..., :12]
    # The right border is inside the latent: its last min(8, 12 // 4) = 3 columns fade, which
    # changes the weight but not the weighted average of a single entry.
    torch.testing.assert_close(out["samples"][..., :12], by_hand(crop, float(sigma), 1.0), rtol=1e-5, atol=1e-5)
    # Nothing covers the right half: it predicts 0 there (weights start at 1e-37, not 0).
    torch.testing.assert_close(out["samples"][..., 12:], torch.zeros(1, 4, 16, 12), rtol=0, atol=1e-5)
    assert [call["shape"] for call in model.calls] == [(1, 4, 16, 12)]
