"""``comfy.ldm.lightricks.symmetric_patchifier``: LTX-Video latents to token sequences and back.

Pure tensor helpers (no weights), real here: ComfyUI-LTXVideo calls
:func:`latent_to_pixel_coords` for its own position maths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from einops import rearrange


def latent_to_pixel_coords(
    latent_coords: torch.Tensor, scale_factors: tuple[int, int, int], causal_fix: bool = False
) -> torch.Tensor:
    """Latent ``[B, 3, N]`` (frame, y, x) coordinates scaled to pixels by the VAE's factors.

    With ``causal_fix`` the frame axis accounts for the causal VAE's first frame standing alone:
    pixel frame = max(0, latent frame * factor + 1 - factor).
    """
    pixel = torch.stack([latent_coords[:, i] * scale_factors[i] for i in range(latent_coords.shape[1])], dim=1)
    if causal_fix:
        pixel[:, 0, ...] = (pixel[:, 0, ...] + 1 - scale_factors[0]).clamp(min=0)
    return pixel


class Patchifier(ABC):
    """Cuts ``[B, C, F, H, W]`` latents into ``(1, p, p)`` patches and back."""

    def __init__(self, patch_size: int, start_end: bool = False) -> None:
        super().__init__()
        self._patch_size = (1, patch_size, patch_size)
        self.start_end = start_end

    @abstractmethod
    def patchify(self, latents: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def unpatchify(self, latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any: ...

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self._patch_size

    def get_latent_coords(
        self, latent_num_frames: int, latent_height: int, latent_width: int, batch_size: int, device: Any
    ) -> torch.Tensor:
        """``[B, 3, N]`` top-left latent coordinates of each patch (``[B, 3, N, 2]`` start / end
        pairs with ``start_end``)."""
        axes = [
            torch.arange(0, size, step, device=device)
            for size, step in zip((latent_num_frames, latent_height, latent_width), self._patch_size, strict=True)
        ]
        grid = torch.meshgrid(*axes, indexing="ij")
        start = torch.stack(grid, dim=0).flatten(1).unsqueeze(0).repeat(batch_size, 1, 1)
        if not self.start_end:
            return start
        end = torch.stack([g + s for g, s in zip(grid, self._patch_size, strict=True)], dim=0)
        end = end.flatten(1).unsqueeze(0).repeat(batch_size, 1, 1)
        return torch.stack((start, end), dim=-1)


class SymmetricPatchifier(Patchifier):
    """The video patchifier: tokens ``[B, F*H*W, C*p*p]`` in frame-major order."""

    def patchify(self, latents: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, f, h, w = latents.shape
        coords = self.get_latent_coords(f, h, w, b, latents.device)
        p1, p2, p3 = self._patch_size
        tokens = rearrange(latents, "b c (f p1) (h p2) (w p3) -> b (f h w) (c p1 p2 p3)", p1=p1, p2=p2, p3=p3)
        return tokens, coords

    def unpatchify(
        self, latents: torch.Tensor, output_height: int, output_width: int, output_num_frames: int,
        out_channels: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        _, p, q = self._patch_size
        return rearrange(
            latents, "b (f h w) (c p q) -> b c f (h p) (w q)",
            f=output_num_frames, h=output_height // p, w=output_width // q, p=p, q=q,
        )  # fmt: skip


class AudioPatchifier(Patchifier):
    """The audio patchifier: ``[B, C, T, F]`` latents to ``[B, T, C*F]`` tokens with their times."""

    def __init__(
        self, patch_size: int, sample_rate: int = 16000, hop_length: int = 160, audio_latent_downsample_factor: int = 4,
        is_causal: bool = True, start_end: bool = False, shift: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(patch_size, start_end=start_end)
        self.hop_length = hop_length
        self.sample_rate = sample_rate
        self.audio_latent_downsample_factor = audio_latent_downsample_factor
        self.is_causal = is_causal
        self.shift = shift

    def copy_with_shift(self, shift: int) -> AudioPatchifier:
        return AudioPatchifier(
            self._patch_size[1], self.sample_rate, self.hop_length, self.audio_latent_downsample_factor,
            self.is_causal, self.start_end, shift,
        )  # fmt: skip

    def _get_audio_latent_time_in_sec(
        self, start_latent: int, end_latent: int, dtype: torch.dtype, device: Any = None
    ) -> torch.Tensor:
        mel_frame = torch.arange(start_latent, end_latent, dtype=dtype, device=device) * self.audio_latent_downsample_factor
        if self.is_causal:
            mel_frame = (mel_frame + 1 - self.audio_latent_downsample_factor).clip(min=0)
        return mel_frame * self.hop_length / self.sample_rate

    def patchify(self, audio_latents: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, t, _ = audio_latents.shape
        tokens = rearrange(audio_latents, "b c t f -> b t (c f)")
        start = self._get_audio_latent_time_in_sec(self.shift, t + self.shift, torch.float32, audio_latents.device)
        start = start.unsqueeze(0).expand(b, -1).unsqueeze(1)
        if not self.start_end:
            return tokens, start
        end = self._get_audio_latent_time_in_sec(self.shift + 1, t + self.shift + 1, torch.float32, audio_latents.device)
        end = end.unsqueeze(0).expand(b, -1).unsqueeze(1)
        return tokens, torch.stack([start, end], dim=-1)

    def unpatchify(self, audio_latents: torch.Tensor, channels: int, freq: int) -> torch.Tensor:
        return rearrange(audio_latents, "b t (c f) -> b c t f", c=channels, f=freq)
