"""``comfy.gligen``: GLIGEN's position net and gated attention blocks under the reference's names.

``load_gligen(sd)`` builds the :class:`Gligen` network from a GLIGEN file's state dict (what
``comfy.utils.load_torch_file`` returns), the same module the GLIGENLoader node wraps;
``comfy.sd.load_gligen(path)`` gives that node's value (a ``ModelPatcher`` whose ``.model`` is the
network). ``Gligen.set_position(latent_shape, position_params, device)`` / ``set_empty`` return the
``middle_patch`` the UNet runs after each transformer's self-attention. The classes are the core
nodes' own (``plugins.core_nodes.models.gligen``), so ``isinstance`` holds for loaded models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from plugins.core_nodes.models.gligen import (
    FOURIER_FREQS,
    MAX_OBJECTS,
    GatedSelfAttention,
    Gligen,
    GLIGENError,
    PositionNet,
    fourier_features,
)
from plugins.core_nodes.models.gligen import load_gligen as _load_gligen

# The reference's class name for the gated self-attention block the GLIGEN files hold.
GatedSelfAttentionDense = GatedSelfAttention


class FourierEmbedder:
    """Box coordinates -> sines and cosines at ``num_freqs`` frequencies (powers of
    ``temperature``), frequency by frequency, as the position net embeds them."""

    def __init__(self, num_freqs: int = 64, temperature: float = 100) -> None:
        self.num_freqs = num_freqs
        self.temperature = temperature
        self.freq_bands = temperature ** (torch.arange(num_freqs) / num_freqs)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, cat_dim: int = -1) -> torch.Tensor:
        if cat_dim not in (-1, x.ndim - 1):
            raise ValueError("FourierEmbedder here concatenates along the last dimension only")
        return fourier_features(x, self.num_freqs, self.temperature)


def load_gligen(sd: Mapping[str, Any]) -> Gligen:
    """The GLIGEN network of a state dict; a :class:`GLIGENError` (a ``ValueError``) for anything
    that is not one."""
    return _load_gligen(sd, "comfy.gligen.load_gligen(sd)")


__all__ = [
    "FOURIER_FREQS",
    "MAX_OBJECTS",
    "FourierEmbedder",
    "GLIGENError",
    "GatedSelfAttentionDense",
    "Gligen",
    "PositionNet",
    "load_gligen",
]
