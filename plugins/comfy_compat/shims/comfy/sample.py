"""``comfy.sample``: noise, the empty-latent fix and the sampling entry points.

``sample`` is what the core KSampler node runs after drawing its noise: it looks this module's
``sample`` up at call time, so a pack that wraps it (Impact-Pack's error enhancer) wraps the
node's sampling too, as in ComfyUI. ``prepare_noise`` is the core nodes' own, so a pack that
draws its noise here gets the tensor KSampler would for that seed and batch indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from plugins.core_nodes.sampler_objects import sample_custom as sample_custom
from plugins.core_nodes.sampler_objects import sample_latents as sample

__all__ = [
    "cleanup_additional_models",
    "fix_empty_latent_channels",
    "prepare_noise",
    "prepare_sampling",
    "sample",
    "sample_custom",
]

log = logging.getLogger("comfykernel.compat")


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


def prepare_sampling(
    model: Any, noise_shape: Any, positive: Any, negative: Any, noise_mask: Any
) -> tuple[Any, ...]:
    """Deprecated in the reference too: returns its arguments and no extra models."""
    log.warning("comfy.sample.prepare_sampling isn't used anymore and can be removed")
    return model, positive, negative, noise_mask, []


def cleanup_additional_models(models: Any) -> None:
    """Deprecated in the reference too: does nothing."""
    log.warning("comfy.sample.cleanup_additional_models isn't used anymore and can be removed")
