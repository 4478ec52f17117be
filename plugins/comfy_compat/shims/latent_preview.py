"""``latent_preview``: the step callback and latent previewers for packs' own sampling loops.

Previews follow the server's ``--preview-method``: ``none`` sends none; every other method gives
the latent->RGB previewer (this server has no TAESD decoder, so ``taesd`` previews fall back to
it, as the reference does when the decoder file is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import comfy.model_management
import comfy.utils
import torch
from comfykernel_compat_runtime import kernel as _kernel
from PIL import Image

# Video VAEs whose TAE previews decode a frame at a time (the reference's list).
VIDEO_TAES = ["taehv", "lighttaew2_2", "lighttaew2_1", "lighttaehy1_5", "taeltx_2"]


def _settings() -> Any:
    return _kernel().settings


def __getattr__(name: str) -> Any:
    # Module constants in the reference, read from the server's settings here at access time.
    if name == "MAX_PREVIEW_RESOLUTION":
        return _settings().preview_size
    if name == "default_preview_method":
        return _settings().preview_method
    raise AttributeError(f"module 'latent_preview' has no attribute {name!r}")


class TAESD(torch.nn.Module):
    """The reference's tiny autoencoder for previews; not provided by this server (its previews
    use the latent->RGB projection), so constructing one raises ``NotImplementedError``."""

    def __init__(self, encoder_path: Any = None, decoder_path: Any = None, latent_channels: int = 4) -> None:
        raise NotImplementedError("TAESD previews are not supported by comfykernel; use latent2rgb")


def preview_to_image(latent_image: torch.Tensor, do_scale: bool = True) -> Image.Image:
    """An ``[H, W, 3]`` tensor (in -1..1, or 0..1 with ``do_scale=False``) as a PIL image."""
    pixels = (latent_image + 1.0) / 2.0 if do_scale else latent_image
    pixels = pixels.clamp(0, 1).mul(0xFF).to(device="cpu", dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


class LatentPreviewer:
    """Base previewer: ``decode_latent_to_preview(x0)`` gives a PIL image."""

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Any:
        return None

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple[str, Any, int]:
        """``(format, image, max_size)``, what ``ProgressBar.update_absolute(preview=...)`` sends."""
        return ("JPEG", self.decode_latent_to_preview(x0), _settings().preview_size)


class TAESDPreviewerImpl(LatentPreviewer):
    """Decodes with a TAESD-like model (anything with ``decode(latents) -> [B, C, H, W]``)."""

    def __init__(self, taesd: Any) -> None:
        self.taesd = taesd

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        return preview_to_image(self.taesd.decode(x0[:1])[0].movedim(0, 2))


class Latent2RGBPreviewer(LatentPreviewer):
    """Projects the first latent of the batch to RGB with a ``channels x 3`` matrix (+ bias)."""

    def __init__(
        self,
        latent_rgb_factors: Sequence[Sequence[float]],
        latent_rgb_factors_bias: Sequence[float] | None = None,
        latent_rgb_factors_reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.latent_rgb_factors = torch.tensor(latent_rgb_factors, device="cpu").transpose(0, 1)
        self.latent_rgb_factors_bias = (
            None if latent_rgb_factors_bias is None else torch.tensor(latent_rgb_factors_bias, device="cpu")
        )
        self.latent_rgb_factors_reshape = latent_rgb_factors_reshape

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        if self.latent_rgb_factors_reshape is not None:
            x0 = self.latent_rgb_factors_reshape(x0)
        factors = self.latent_rgb_factors.to(dtype=x0.dtype, device=x0.device)
        bias = None if self.latent_rgb_factors_bias is None else self.latent_rgb_factors_bias.to(x0.dtype, x0.device)
        first = x0[0, :, 0] if x0.ndim == 5 else x0[0]
        return preview_to_image(torch.nn.functional.linear(first.movedim(0, -1), factors, bias=bias))


def get_previewer(device: Any, latent_format: Any) -> LatentPreviewer | None:
    """The previewer for ``latent_format`` under the server's preview method, or None."""
    if _settings().preview_method == "none":
        return None
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:
        return None
    return Latent2RGBPreviewer(
        factors,
        getattr(latent_format, "latent_rgb_factors_bias", None),
        getattr(latent_format, "latent_rgb_factors_reshape", None),
    )


def set_preview_method(override: str | None = None) -> None:
    """Accepted for compatibility; the preview method is the server's setting."""
    return None


def _latent_format(model: Any) -> Any:
    inner = getattr(model, "model", None)
    return getattr(inner, "latent_format", None) or getattr(model, "latent_format", None)


def prepare_callback(
    model: Any, steps: int, x0_output_dict: dict[str, Any] | None = None
) -> Callable[[int, Any, Any, int], None]:
    """The k-diffusion step callback: progress (with a preview) per step; stores the last
    denoised latent in ``x0_output_dict["x0"]`` when a dict is given."""
    device = getattr(model, "load_device", None) or comfy.model_management.get_torch_device()
    previewer = get_previewer(device, _latent_format(model))
    bar = comfy.utils.ProgressBar(steps)

    def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
        bar.update_absolute(step + 1, total_steps, preview)

    return callback
