"""Initial latent noise must be bit-identical to the reference's for the same seed and shape."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from plugins.core_nodes.sampling.noise import default_noise_sampler, prepare_noise

from .golden import GOLDEN_DIR

GOLDEN = load_file(GOLDEN_DIR / "noise.safetensors")


def _parse(key: str) -> tuple[int, list[int]]:
    match = re.fullmatch(r"seed_(\d+)_shape_([\dx]+)", key)
    assert match, key
    return int(match.group(1)), [int(n) for n in match.group(2).split("x")]


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_prepare_noise_matches_reference(key: str) -> None:
    seed, shape = _parse(key)
    noise = prepare_noise(torch.zeros(shape), seed)
    assert noise.dtype == torch.float32
    assert noise.shape == GOLDEN[key].shape
    assert torch.equal(noise, GOLDEN[key])


def test_golden_covers_the_seed_edges() -> None:
    seeds = {_parse(key)[0] for key in GOLDEN}
    assert {0, 42, 123456789, 2**63 - 1} <= seeds


def test_batch_inds_select_draws_in_index_order() -> None:
    latent = torch.zeros(1, 4, 8, 8)
    # Per-index draws: index k is the k-th [1, C, H, W] draw from the seeded generator.
    generator = torch.Generator().manual_seed(7)
    draws = [torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3)]
    picked = prepare_noise(latent, 7, batch_inds=[2, 0, 2])
    assert picked.shape == (3, 4, 8, 8)
    assert torch.equal(picked[0], draws[2][0])
    assert torch.equal(picked[1], draws[0][0])
    assert torch.equal(picked[2], draws[2][0])


def test_step_noise_uses_seed_plus_one_on_cpu() -> None:
    x = torch.zeros(2, 4, 8, 8)
    sampler = default_noise_sampler(x, 42)
    first = sampler(torch.tensor(1.0), torch.tensor(0.5))
    second = sampler(torch.tensor(0.5), torch.tensor(0.1))
    expected = torch.Generator().manual_seed(43)
    assert torch.equal(first, torch.randn(x.shape, generator=expected))
    assert torch.equal(second, torch.randn(x.shape, generator=expected))
    assert not torch.equal(first, prepare_noise(x, 42))


@pytest.mark.parametrize("sampler_name", ["euler_ancestral", "ddim"])
def test_the_largest_seed_samples(sampler_name: str) -> None:
    # The seed widget allows 0xFFFFFFFFFFFFFFFF; the step / inpaint noise seeds with seed + 1,
    # which must wrap rather than overflow torch's 64-bit generator seed.
    from plugins.core_nodes.nodes.common import MAX_SEED
    from plugins.core_nodes.sampling.samplers import sample

    assert torch.isfinite(default_noise_sampler(torch.zeros(2, 3), MAX_SEED)(None, None)).all()  # type: ignore[arg-type]
    latent = torch.zeros(1, 4, 4, 4)
    mask = torch.ones(1, 4, 4, 4)
    mask[..., :2] = 0
    out = sample(
        lambda x, sigma: x * 0.5,
        prepare_noise(latent, MAX_SEED),
        torch.tensor([2.0, 1.0, 0.0]),
        sampler_name,
        MAX_SEED,
        latent,
        denoise_mask=mask,
    )
    assert torch.isfinite(out).all()
