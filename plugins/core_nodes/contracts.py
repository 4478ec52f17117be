"""What the node layer needs from the model stack: small Protocols, plus the latent formats.

The loader nodes hand these objects around as MODEL, CLIP and VAE values; KSampler, CLIPTextEncode
and the VAE nodes use nothing else of them. Whoever wires a real UNet / text encoder / VAE into the
nodes writes a thin adapter that satisfies these Protocols (and the loader functions listed in
:mod:`plugins.core_nodes.nodes.loaders`), so the node code never depends on a model class.

Tensor conventions are the reference's, because custom-node packs depend on them:

* IMAGE: float32 ``[B, H, W, C]`` in 0..1; MASK: ``[B, H, W]`` in 0..1.
* LATENT: ``{"samples": [B, 4, h, w], "noise_mask"?: [B, 1, H, W] or [B, H, W], "batch_index"?: [int]}``.
* CONDITIONING: a list of ``[tensor [1, T, C], dict]`` pairs; the dict carries ``pooled_output``
  and whatever the conditioning nodes set (``area``, ``strength``, ``mask``, ``start_percent``...).

Nothing here imports torch at module import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete


@dataclass(frozen=True)
class LatentFormat:
    """How one model family's latents look: channels, VAE scale factor and an RGB approximation.

    ``rgb_factors`` is a ``channels x 3`` matrix: ``rgb = latent_channels @ rgb_factors + rgb_bias``
    gives a rough picture in -1..1 for previews, without running the VAE.
    """

    name: str
    channels: int
    scale_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    downscale_ratio: int = 8

    # The reference's attribute names, for node packs that read them.
    @property
    def latent_channels(self) -> int:
        return self.channels

    @property
    def latent_dimensions(self) -> int:
        return 2

    @property
    def spacial_downscale_ratio(self) -> int:
        return self.downscale_ratio

    @property
    def latent_rgb_factors(self) -> list[list[float]]:
        return [list(row) for row in self.rgb_factors]

    @property
    def latent_rgb_factors_bias(self) -> list[float]:
        return list(self.rgb_bias)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE latent -> diffusion-model latent."""
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        """Diffusion-model latent -> VAE latent."""
        return latent / self.scale_factor

    def preview_image(self, latent: torch.Tensor) -> torch.Tensor:
        """``[C, h, w]`` (or the first item of a batch) -> ``[h, w, 3]`` float image in 0..1."""
        import torch

        if latent.ndim == 4:
            latent = latent[0]
        factors = torch.tensor(self.rgb_factors, dtype=torch.float32, device=latent.device)
        bias = torch.tensor(self.rgb_bias, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent.float(), factors) + bias
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).cpu()


# Linear latent->RGB fits for the SD1.x/SD2.x and SDXL VAEs (public, widely used figures).
SD15 = LatentFormat(
    name="SD15",
    channels=4,
    scale_factor=0.18215,
    rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
)
SDXL = LatentFormat(
    name="SDXL",
    channels=4,
    scale_factor=0.13025,
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)
LATENT_FORMATS: dict[str, LatentFormat] = {"SD15": SD15, "SD1": SD15, "SD2": SD15, "SDXL": SDXL}


@runtime_checkable
class DiffusionModel(Protocol):
    """A MODEL value: the denoiser KSampler drives.

    ``model(x, sigma, cond)`` returns the denoised (x0) prediction for a batch ``x`` (model-space
    latents, i.e. already multiplied by ``latent_format.scale_factor``) at per-item noise levels
    ``sigma`` (shape ``[B]``). ``cond`` holds batched tensors for the same ``B``:

    * ``c_crossattn``: ``[B, T, C]`` text embeddings (always present);
    * ``pooled_output``: ``[B, P]`` or absent (SDXL's ADM input is built from it by the model,
      with ``width`` / ``height`` / ``crop_w`` / ``crop_h`` / ``target_width`` / ``target_height``
      when the conditioning carries them);
    * ``c_concat``: ``[B, concat_channels, h, w]`` for inpainting models (see ``concat_channels``).

    The model applies its own ``model_sampling`` input/output scaling (eps or v prediction).
    ``concat_channels`` is 0 for ordinary models and 5 for SD inpainting UNets (mask + masked
    latent). Adapters may add ``patches`` (LoRA) and anything else; the nodes never look.
    """

    model_sampling: ModelSamplingDiscrete
    latent_format: LatentFormat
    concat_channels: int

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """A CLIP value: prompt text -> conditioning.

    ``encode(text)`` tokenizes with the reference's prompt-weight syntax and returns
    ``(cond [1, T, C], pooled [1, P] or None)``; T is a multiple of 77 for long prompts.
    ``with_last_layer(n)`` returns a *new* encoder that stops at layer ``n`` (negative, -1 = last),
    leaving this one unchanged because cached node outputs may still hold it.
    """

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def with_last_layer(self, layer: int) -> TextEncoder: ...


@runtime_checkable
class ImageAutoencoder(Protocol):
    """A VAE value. Pixels are IMAGE tensors ``[B, H, W, 3]`` in 0..1; latents are VAE-space
    (not scaled by the latent format) ``[B, 4, H/8, W/8]``.

    ``encode_tiled`` / ``decode_tiled`` have the reference's signatures: ``tile_x`` / ``tile_y`` /
    ``overlap`` in pixels for encoding and in *latent* pixels for decoding; they must give results
    close to the plain calls (seams blended) while using bounded memory.
    """

    downscale_ratio: int
    latent_format: LatentFormat

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...

    def encode_tiled(self, pixels: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor: ...

    def decode_tiled(self, latent: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor: ...


__all__ = [
    "LATENT_FORMATS",
    "SD15",
    "SDXL",
    "DiffusionModel",
    "ImageAutoencoder",
    "LatentFormat",
    "TextEncoder",
]
