"""``comfy.sample``: the initial noise and the empty-latent fix the core KSampler works with.

``prepare_noise`` is the core nodes' own (``plugins.core_nodes.sampling.noise``), so a pack that
draws its noise here gets the same tensor KSampler would for that seed and batch indices. The
sampling functions themselves (``sample``, ``sample_custom``) are not provided: packs sample with
``nodes.common_ksampler``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["fix_empty_latent_channels", "prepare_noise"]


def prepare_noise(latent_image: Any, seed: int, noise_inds: Sequence[int] | None = None) -> Any:
    """Standard-normal CPU noise shaped like ``latent_image``; ``noise_inds`` are batch indices."""
    from plugins.core_nodes.sampling.noise import prepare_noise as core_prepare_noise

    inds = None if noise_inds is None else [int(i) for i in noise_inds]
    return core_prepare_noise(latent_image, int(seed), inds)


def fix_empty_latent_channels(
    model: Any, latent_image: Any, downscale_ratio_spacial: int | None = None
) -> Any:
    """An all-zero latent reshaped to ``model``'s latent channels (and, given the ratio it was
    made for, its spatial downscale); any other latent is returned as it is."""
    import torch

    latent_format = getattr(model, "latent_format", None)
    if latent_format is None:
        raise TypeError(
            f"comfy.sample.fix_empty_latent_channels: {type(model).__name__} is not a MODEL "
            "from the loaders (it has no latent_format)"
        )
    if latent_image.ndim != 4 or torch.count_nonzero(latent_image) != 0:
        return latent_image
    batch, channels, height, width = latent_image.shape
    ratio = latent_format.downscale_ratio
    if downscale_ratio_spacial is not None and downscale_ratio_spacial != ratio:
        height = max(1, round(height * downscale_ratio_spacial / ratio))
        width = max(1, round(width * downscale_ratio_spacial / ratio))
    shape = (batch, latent_format.channels, height, width)
    if tuple(latent_image.shape) == shape:
        return latent_image
    return torch.zeros(shape, dtype=latent_image.dtype, device=latent_image.device)
