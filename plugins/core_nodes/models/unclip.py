"""unCLIP image conditioning: CLIP image embeddings noise-augmented into a UNet's ADM vector.

SD2.1 unCLIP (and SDXL's "revision" use of image embeddings) does not feed an image embedding to
the UNet as it is. :class:`CLIPEmbeddingNoiseAugmentation` (the reference's name and keyword
arguments) normalises it by the embedder's statistics, diffuses it to a chosen *noise level* of
its own DDPM schedule (``squaredcos_cap_v2``, 1000 steps for the unCLIP models), un-normalises it
and appends the sinusoidal embedding of that noise level, which the model was trained to read as
"how much to trust the image".

:func:`unclip_adm` turns a cond entry's ``unclip_conditioning`` list (what unCLIPConditioning
appends: ``clip_vision_output``, ``strength``, ``noise_augmentation``) into that vector, as the
reference does: every image of every entry is augmented on its own, at the entry's level and
from a generator seeded with ``seed``, then scaled by the entry's strength; several are summed and
the sum's embedding part augmented once more at ``noise_augment_merge``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.unet import timestep_embedding

# The unCLIP models' augmentation schedule (the reference's noise_aug_config for SD21UnclipL/H).
UNCLIP_SCHEDULE: dict[str, Any] = {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}


class UnclipError(ValueError):
    """unCLIP conditioning or an augmentor setting this server cannot use."""


def make_betas(
    beta_schedule: str = "linear",
    timesteps: int = 1000,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """The DDPM betas of a named schedule, in float64 (cast to float32 only after the products)."""
    if beta_schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        # The cosine alpha-bar curve discretised step by step, each beta capped at 0.999.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
            for i in range(timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise UnclipError(f"unknown noise augmentation schedule {beta_schedule!r} (linear or squaredcos_cap_v2)")


class NoiseLevelEmbedding(nn.Module):
    """The sinusoidal embedding of a noise level (the reference's ``Timestep``; ``dim`` is read)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class CLIPEmbeddingNoiseAugmentation(nn.Module):
    """Diffuses image embeddings ``[N, timestep_dim]`` to a noise level and embeds that level.

    ``noise_schedule_config`` holds :func:`make_betas`' arguments; ``clip_stats_path`` a file of
    ``(mean, std)`` (the embedder's statistics; by default 0 and 1, which is what the reference's
    single-file loader gives the unCLIP checkpoints, whose stored copies it never reads).
    """

    def __init__(
        self,
        noise_schedule_config: Mapping[str, Any] | None = None,
        max_noise_level: int = 1000,
        to_cuda: bool = False,
        *,
        clip_stats_path: str | Path | None = None,
        timestep_dim: int = 256,
        data_mean: torch.Tensor | None = None,
        data_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.max_noise_level = int(max_noise_level)
        if noise_schedule_config is not None:
            self.register_schedule(**noise_schedule_config)
        if clip_stats_path is not None:
            data_mean, data_std = torch.load(str(clip_stats_path), map_location="cpu", weights_only=True)
        mean = torch.zeros(timestep_dim) if data_mean is None else data_mean.float().reshape(-1)
        std = torch.ones(timestep_dim) if data_std is None else data_std.float().reshape(-1)
        # Not saved with the model (as in the original training code).
        self.register_buffer("data_mean", mean[None, :], persistent=False)
        self.register_buffer("data_std", std[None, :], persistent=False)
        self.time_embed = NoiseLevelEmbedding(timestep_dim)

    def register_schedule(
        self,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """The schedule's tables as float32 buffers (computed in float64), under the reference's names."""
        betas = make_betas(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": previous,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.to(torch.float32))

    def noise_level(self, amount: float) -> int:
        """The schedule step a 0..1 augmentation amount means (0 .. max_noise_level - 1)."""
        return round((self.max_noise_level - 1) * amount)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.data_mean.to(x.device)) * 1.0 / self.data_std.to(x.device)

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.data_std.to(x.device) + self.data_mean.to(x.device)

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_start`` diffused to steps ``t`` (one per row). The noise is ``noise``, else drawn
        on the CPU from ``generator`` or a generator seeded with ``seed`` (the reference seeds
        torch's global one, so its draws equal these), else from torch's global generator."""
        if noise is None:
            if generator is None and seed is not None:
                generator = torch.Generator().manual_seed(int(seed))
            if generator is None:
                noise = torch.randn_like(x_start)
            else:
                noise = torch.randn(
                    x_start.size(),
                    dtype=x_start.dtype,
                    layout=x_start.layout,
                    generator=generator,
                    device=generator.device,
                ).to(x_start.device)
        rows = (t.shape[0],) + (1,) * (x_start.ndim - 1)
        signal = self.sqrt_alphas_cumprod.to(x_start.device).gather(-1, t).reshape(rows)
        spread = self.sqrt_one_minus_alphas_cumprod.to(x_start.device).gather(-1, t).reshape(rows)
        return signal * x_start + spread * noise

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the augmented embeddings, the noise level's embedding); a random level per row when
        none is given."""
        if noise_level is None:
            noise_level = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device).long()
        elif not isinstance(noise_level, torch.Tensor):
            raise UnclipError("the noise level must be a tensor of schedule steps")
        z = self.unscale(self.q_sample(self.scale(x), noise_level, seed=seed, generator=generator))
        return z, self.time_embed(noise_level)


@functools.cache
def revision_augmentor(width: int) -> CLIPEmbeddingNoiseAugmentation:
    """The augmentor of SDXL's unCLIP image embeddings (its "revision" use): the unCLIP
    schedule at the pooled width (1280 for SDXL), mean 0 / std 1; one per width, shared."""
    return CLIPEmbeddingNoiseAugmentation(UNCLIP_SCHEDULE, timestep_dim=width)


def _image_embeds(entry: Mapping[str, Any]) -> torch.Tensor:
    output = entry.get("clip_vision_output")
    embeds = getattr(output, "image_embeds", None)
    if embeds is None and isinstance(output, Mapping):
        embeds = output.get("image_embeds")
    if not isinstance(embeds, torch.Tensor):
        raise UnclipError(
            "unCLIP conditioning needs a CLIP vision output with image embeddings (a CLIP vision "
            "model with a projection)"
        )
    return embeds


def unclip_adm(
    unclip_conditioning: Sequence[Mapping[str, Any]],
    device: Any,
    noise_augmentor: CLIPEmbeddingNoiseAugmentation,
    noise_augment_merge: float = 0.0,
    seed: int | None = None,
) -> torch.Tensor | None:
    """The ADM vector ``[1, 2 * timestep_dim]`` of a cond entry's unCLIP embeddings (None: none).

    Each image embedding (every row of every entry's ``image_embeds``) is augmented at its
    entry's level with noise drawn afresh from ``seed``, its level embedding appended, and the
    whole scaled by the entry's strength. Several are summed, and the embedding half of the sum
    is augmented again at ``noise_augment_merge`` (unscaled).
    """
    outputs: list[torch.Tensor] = []
    generator: torch.Generator | None = None
    width = noise_augmentor.time_embed.dim
    for entry in unclip_conditioning:
        embeds = _image_embeds(entry)
        if embeds.shape[-1] != width:
            raise UnclipError(
                f"the image embeddings are {embeds.shape[-1]} wide but this model takes {width}: "
                "use the CLIP vision model that belongs to the checkpoint"
            )
        for embed in embeds.reshape(-1, width):
            level = noise_augmentor.noise_level(float(entry["noise_augmentation"]))
            generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            noised, level_embed = noise_augmentor(
                embed.to(device), noise_level=torch.tensor([level], device=device), generator=generator
            )
            outputs.append(torch.cat((noised, level_embed), 1) * entry["strength"])
    if len(outputs) <= 1:
        return outputs[0] if outputs else None
    merged = torch.stack(outputs).sum(0)
    level = noise_augmentor.noise_level(noise_augment_merge)
    noised, level_embed = noise_augmentor(
        merged[:, :width],
        noise_level=torch.tensor([level], device=device),
        generator=_merge_generator(generator, seed, merged.device),
    )
    return torch.cat((noised, level_embed), 1)


def _merge_generator(
    last: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator | None:
    # The reference draws the merge noise from torch's global generator on the embeddings'
    # device, which its per-image draws had just seeded with ``seed``: on the CPU that generator
    # continues after the last image's draw; a GPU's was seeded and not drawn from yet.
    if seed is None:
        return None
    if device.type == "cpu":
        return last
    return torch.Generator(device=device).manual_seed(int(seed))


__all__ = [
    "UNCLIP_SCHEDULE",
    "CLIPEmbeddingNoiseAugmentation",
    "NoiseLevelEmbedding",
    "UnclipError",
    "make_betas",
    "revision_augmentor",
    "unclip_adm",
]
