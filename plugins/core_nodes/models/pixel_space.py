"""The "pixel_space" VAE: a stand-in autoencoder for models that diffuse pixels directly.

VAELoader offers it under the name ``pixel_space``. Its "latent" is the image itself, moved to the
channels-first layout and to the -1..1 range every VAE network works in: ``latent = 2 * image - 1``
(``[B, 3, H, W]``, no downscaling); decoding maps it back to 0..1 (clamped), as any VAE output
is. There are no weights to read, so nothing is loaded from disk.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.core_nodes.contracts import LatentFormat
from plugins.core_nodes.models.vae import VAE, VAEConfig

__all__ = ["PIXEL_SPACE", "PixelSpaceNetwork", "PixelSpaceVAE"]

# Previews of a pixel latent are the pixels: red, green and blue are channels 0, 1 and 2.
PIXEL_SPACE = LatentFormat(
    name="ChromaRadiance",
    channels=3,
    scale_factor=1.0,
    rgb_factors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    downscale_ratio=1,
)


class PixelSpaceNetwork(nn.Module):
    """The identity "network" behind the pixel-space VAE.

    It holds one scalar parameter only so that model management, ``state_dict`` and the VAE's
    patcher see an ordinary module with a device and a dtype.
    """

    # One level (no downsampling), three latent channels, RGB out; no 1x1 convolutions.
    config = VAEConfig(ch_mult=(1,), z_channels=3, use_quant_conv=False)

    def __init__(self) -> None:
        super().__init__()
        self.pixel_space_vae = nn.Parameter(torch.tensor(1.0), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.pixel_space_vae.dtype

    @property
    def device(self) -> torch.device:
        return self.pixel_space_vae.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in -1..1 (BCHW) are already the latent."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The latent is already pixels in -1..1 (BCHW)."""
        return z


class PixelSpaceVAE(VAE):
    """:class:`VAE`'s image <-> latent conversion over :class:`PixelSpaceNetwork`.

    The conversion itself (RGB channels only, ``* 2 - 1`` in, ``(x + 1) / 2`` clamped out, float32
    latents on the CPU, tiling) is :class:`VAE`'s; only the network differs.
    """

    def __init__(self) -> None:
        # VAE reads the network's config, encode and decode only; this one has all three.
        super().__init__(PixelSpaceNetwork())  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.model.device
