"""Classifier-free guidance and the application of CONDITIONING entries to a model call.

A CONDITIONING value is a list of ``[cross_attn [1, T, C], options]`` pairs. For each model
evaluation, every entry that is active at the current sigma (``start_percent`` / ``end_percent``)
predicts its region of the latent (``area``, optionally narrowed to a ``mask``'s bounds), weighted
by ``strength`` times the mask (times ``mask_strength``) and a linear ramp along area edges that
lie inside the image; the predictions are averaged by those weights. Positive and negative are
resolved the same way and combined as ``uncond + cfg * (cond - uncond)``; with ``cfg == 1`` the
negative pass is skipped, as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kernel.progress import throw_if_interrupted

if TYPE_CHECKING:
    from plugins.core_nodes.contracts import DiffusionModel

# How many latent pixels an area's inner edges fade over, so regions blend instead of seaming.
AREA_FEATHER = 8
# Conditioning options that are handed to the model untouched (SDXL size / crop conditioning).
_PASSTHROUGH = ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "aesthetic_score")


@dataclass
class ResolvedCond:
    """One conditioning entry placed on a concrete latent: its region, weights and model inputs."""

    cross_attn: torch.Tensor
    pooled: torch.Tensor | None
    area: tuple[int, int, int, int]  # (height, width, y, x) in latent pixels
    strength: float
    mask: torch.Tensor | None  # [1 or B, 1, area_h, area_w]
    sigma_start: float
    sigma_end: float
    extra: dict[str, Any] = field(default_factory=dict)
    concat_latent: torch.Tensor | None = None
    concat_mask: torch.Tensor | None = None

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(h, w, y, x) of the non-zero region of ``mask`` ``[..., H, W]``, or None when empty."""
    nonzero = (mask.reshape(-1, *mask.shape[-2:]) > 0).any(dim=0)
    rows = torch.nonzero(nonzero.any(dim=1)).flatten()
    cols = torch.nonzero(nonzero.any(dim=0)).flatten()
    if rows.numel() == 0 or cols.numel() == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return (y1 - y0, x1 - x0, y0, x0)


def _resolve_area(options: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    area = options.get("area")
    if area is None:
        return (height, width, 0, 0)
    if area[0] == "percentage":
        h = max(1, round(area[1] * height))
        w = max(1, round(area[2] * width))
        return (h, w, round(area[3] * height), round(area[4] * width))
    h, w, y, x = (int(v) for v in area)
    return (h, w, y, x)


def resolve(conditioning: list[list[Any]], latent: torch.Tensor, model: DiffusionModel) -> list[ResolvedCond]:
    """Place every entry of ``conditioning`` on ``latent`` ``[B, C, h, w]``."""
    _, _, height, width = latent.shape
    ms = model.model_sampling
    resolved: list[ResolvedCond] = []
    for cross_attn, options in conditioning:
        h, w, y, x = _resolve_area(options, height, width)
        mask = options.get("mask")
        if mask is not None:
            mask = mask.float()
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            mask = torch.nn.functional.interpolate(
                mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False
            )
            mask = mask * float(options.get("mask_strength", 1.0))
            if options.get("set_area_to_bounds"):
                bounds = _mask_bounds(mask)
                if bounds is not None:
                    h, w, y, x = bounds
        # Clip the region to the latent so an oversized area never indexes past the edge.
        y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
        h, w = max(1, min(h, height - y)), max(1, min(w, width - x))
        if mask is not None:
            mask = mask[:, :, y : y + h, x : x + w]
        start = float(options.get("start_percent", 0.0))
        end = float(options.get("end_percent", 1.0))
        resolved.append(
            ResolvedCond(
                cross_attn=cross_attn,
                pooled=options.get("pooled_output"),
                area=(h, w, y, x),
                strength=float(options.get("strength", 1.0)),
                mask=mask,
                sigma_start=ms.percent_to_sigma(start),
                sigma_end=ms.percent_to_sigma(end),
                extra={k: options[k] for k in _PASSTHROUGH if k in options},
                concat_latent=options.get("concat_latent_image"),
                concat_mask=options.get("concat_mask"),
            )
        )
    return resolved


def _weights(cond: ResolvedCond, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w, y, x0 = cond.area
    mult = torch.full((x.shape[0], 1, h, w), cond.strength, dtype=x.dtype, device=x.device)
    if cond.mask is not None:
        mult = mult * cond.mask.to(device=x.device, dtype=x.dtype)
    ramp = min(AREA_FEATHER, h // 4, w // 4)
    for t in range(ramp):
        factor = (t + 1) / ramp
        if y != 0:
            mult[:, :, t : t + 1, :] *= factor
        if y + h < height:
            mult[:, :, h - 1 - t : h - t, :] *= factor
        if x0 != 0:
            mult[:, :, :, t : t + 1] *= factor
        if x0 + w < width:
            mult[:, :, :, w - 1 - t : w - t] *= factor
    return mult


class Guider:
    """The Denoiser the samplers call: conditioning applied, CFG combined.

    ``latent_image`` (model space) and ``denoise_mask`` feed the ``c_concat`` input of inpainting
    models when the conditioning carries no ``concat_latent_image`` / ``concat_mask`` of its own.
    """

    def __init__(
        self,
        model: DiffusionModel,
        positive: list[list[Any]],
        negative: list[list[Any]],
        cfg: float,
        latent_image: torch.Tensor,
        denoise_mask: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.cfg = float(cfg)
        self.positive = resolve(positive, latent_image, model)
        self.negative = resolve(negative, latent_image, model)
        self.latent_image = latent_image
        self.denoise_mask = denoise_mask

    def _concat(self, cond: ResolvedCond, x: torch.Tensor) -> torch.Tensor | None:
        channels = int(getattr(self.model, "concat_channels", 0) or 0)
        if channels <= 0:
            return None
        height, width = x.shape[-2:]
        if cond.concat_mask is not None:
            mask = cond.concat_mask.float().reshape(-1, 1, *cond.concat_mask.shape[-2:])
            mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")
        elif self.denoise_mask is not None:
            mask = self.denoise_mask[:, :1]
        else:
            mask = torch.ones(1, 1, height, width)
        if cond.concat_latent is not None:
            masked = self.model.latent_format.process_in(cond.concat_latent.float())
        else:
            masked = self.latent_image
        mask = mask.to(x).expand(x.shape[0], -1, -1, -1)
        masked = masked.to(x)
        if masked.shape[0] != x.shape[0]:
            masked = masked[:1].expand(x.shape[0], -1, -1, -1)
        return torch.cat([mask, masked], dim=1)[:, :channels]

    def predict(self, conds: list[ResolvedCond], x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The weighted average of every active entry's prediction (zero where none applies)."""
        batch, _, height, width = x.shape
        out = torch.zeros_like(x)
        count = torch.full_like(x, 1e-37)
        level = float(sigma.reshape(-1)[0])
        for cond in conds:
            if not cond.active(level):
                continue
            h, w, y, x0 = cond.area
            region = (slice(None), slice(None), slice(y, y + h), slice(x0, x0 + w))
            inputs: dict[str, Any] = {
                "c_crossattn": cond.cross_attn.to(x).expand(batch, -1, -1)
                if cond.cross_attn.shape[0] == 1
                else cond.cross_attn.to(x),
                **cond.extra,
            }
            if cond.pooled is not None:
                pooled = cond.pooled.to(x)
                inputs["pooled_output"] = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
            concat = self._concat(cond, x)
            if concat is not None:
                inputs["c_concat"] = concat[region]
            prediction = self.model(x[region], sigma, inputs)
            mult = _weights(cond, x, height, width)
            out[region] += prediction * mult
            count[region] += mult
        return out / count

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        throw_if_interrupted()
        cond = self.predict(self.positive, x, sigma)
        uncond = self.predict(self.negative, x, sigma)
        return uncond + (cond - uncond) * self.cfg, uncond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        throw_if_interrupted()
        cond = self.predict(self.positive, x, sigma)
        if math.isclose(self.cfg, 1.0):
            return cond
        uncond = self.predict(self.negative, x, sigma)
        return uncond + (cond - uncond) * self.cfg


__all__ = ["AREA_FEATHER", "Guider", "ResolvedCond", "resolve"]
