"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers.

All randomness is drawn from CPU ``torch.Generator`` objects so a seed gives the same image on
any device, which is also what the reference server does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF


def next_seed(seed: int) -> int:
    """``seed + 1`` wrapped to 64 bits: the seed widget's maximum would overflow the generator."""
    return (seed + 1) & _SEED_MASK


def prepare_noise(latent: torch.Tensor, seed: int, batch_inds: Sequence[int] | None = None) -> torch.Tensor:
    """Standard-normal noise shaped like ``latent`` from one CPU generator seeded with ``seed``.

    Without ``batch_inds`` the whole batch is a single draw. With it (a latent that is a slice of
    a bigger batch), one draw per batch index is taken in index order up to the largest index,
    so item ``k`` gets the same noise it would have had in the full batch.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    if batch_inds is None:
        return torch.randn(
            latent.size(), dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu"
        )
    wanted = sorted(set(int(i) for i in batch_inds))
    item_shape = [1, *latent.shape[1:]]
    drawn: dict[int, torch.Tensor] = {}
    for index in range(wanted[-1] + 1):
        sample = torch.randn(
            item_shape, dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu"
        )
        if index in wanted:
            drawn[index] = sample
    return torch.cat([drawn[int(i)] for i in batch_inds], dim=0)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Fresh standard-normal noise like ``x`` on every call, from one generator.

    The reference offsets the seed by one on CPU, so the per-step noise never repeats the initial
    latent noise drawn from the same seed.
    """
    generator: torch.Generator | None = None
    if seed is not None:
        if x.device == torch.device("cpu"):
            seed = next_seed(seed)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample
