"""Guidance rules that replace or adjust classifier-free guidance's arithmetic.

Each factory returns the function one node installs, in the reference's argument-dict form:

* pre-CFG functions (``set_model_sampler_pre_cfg_function``) get ``conds_out`` (the denoised
  predictions, ``[cond, uncond, ...]``) and return a new list: APG, TCFG, FreSca;
* post-CFG functions (``set_model_sampler_post_cfg_function``) get the guided ``denoised`` and
  return a new one: CFGNorm, CFG-Zero*, Mahiro, epsilon scaling, temporal score rescaling;
* a CFG function (``set_model_sampler_cfg_function``) works on noise predictions ``input -
  denoised``: CFGNorm's pre-CFG mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from plugins.core_nodes.patches.frequency import scale_frequencies

Args = dict[str, Any]
PatchFunction = Callable[[Args], Any]
_SPATIAL = (-1, -2, -3)


# --- Adaptive Projected Guidance (Sadat et al. 2024, arXiv 2410.02416) --------------------------


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the part of ``v0`` along ``v1``, the part orthogonal to it), per batch item over C, H, W."""
    unit = v1 / v1.norm(p=2, dim=_SPATIAL, keepdim=True).clamp_min(1e-12)
    parallel = (v0 * unit).sum(dim=_SPATIAL, keepdim=True) * unit
    return parallel, v0 - parallel


class AdaptiveProjectedGuidance:
    """APG's pre-CFG function: the guidance ``cond - uncond`` (optionally a momentum average of
    it over the steps, optionally clipped to an L2 norm), with its component parallel to the
    conditional prediction scaled by ``eta``; the cond is rewritten so that the sampler's plain
    CFG ``uncond + scale * (cond - uncond)`` yields ``cond + (scale - 1) * guidance'``.

    The momentum average restarts when the sigma rises (a new sampling run)."""

    def __init__(self, eta: float, norm_threshold: float, momentum: float) -> None:
        self.eta = eta
        self.norm_threshold = norm_threshold
        self.momentum = momentum
        self.running: torch.Tensor | None = None
        self.prev_sigma: torch.Tensor | None = None

    def __call__(self, args: Args) -> list[Any]:
        conds_out = args["conds_out"]
        if len(conds_out) == 1:
            return conds_out
        cond, uncond = conds_out[0], conds_out[1]
        sigma = args["sigma"][0]
        scale = args["cond_scale"]
        if self.prev_sigma is not None and sigma > self.prev_sigma:
            self.running = None
        self.prev_sigma = sigma
        guidance = cond - uncond
        if self.momentum != 0:
            self.running = guidance if self.running is None else self.momentum * self.running + guidance
            guidance = self.running
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=_SPATIAL, keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        parallel, orthogonal = project(guidance, cond)
        modified = orthogonal + self.eta * parallel
        return [uncond + modified + (cond - uncond) / scale, uncond, *conds_out[2:]]


# --- CFGNorm and CFG-Zero* --------------------------------------------------------------------


def cfg_norm_post(strength: float) -> PatchFunction:
    """The guided result scaled down (never up) to the conditional prediction's norm over the
    channels, per pixel, times ``strength``."""

    def cfg_norm(args: Args) -> torch.Tensor:
        cond = args["cond_denoised"]
        guided = args["denoised"]
        ratio = torch.norm(cond, dim=1, keepdim=True) / (torch.norm(guided, dim=1, keepdim=True) + 1e-8)
        return guided * ratio.clamp(min=0.0, max=1.0) * strength

    return cfg_norm


def cfg_norm_pre(strength: float) -> PatchFunction:
    """A CFG function on noise predictions: plain CFG rescaled (up or down) to the conditional
    noise's per-pixel channel norm, blended with plain CFG by ``strength``."""

    def cfg_norm(args: Args) -> torch.Tensor:
        cond, uncond = args["cond"], args["uncond"]
        combined = uncond + args["cond_scale"] * (cond - uncond)
        cond_norm = torch.linalg.vector_norm(cond, dim=1, keepdim=True)
        comb_norm = torch.linalg.vector_norm(combined, dim=1, keepdim=True)
        ratio = torch.where(comb_norm > 0, cond_norm / comb_norm.clamp_min(1e-12), torch.ones_like(comb_norm))
        rescaled = combined * ratio
        if strength != 1.0:
            rescaled = strength * rescaled + (1.0 - strength) * combined
        return rescaled

    return cfg_norm


def optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s per-item projection coefficient ``<positive, negative> / ||negative||^2``."""
    batch = positive.shape[0]
    pos, neg = positive.reshape(batch, -1), negative.reshape(batch, -1)
    alpha = (pos * neg).sum(dim=1, keepdim=True) / ((neg**2).sum(dim=1, keepdim=True) + 1e-8)
    return alpha.reshape([batch] + [1] * (positive.ndim - 1))


def cfg_zero_star(args: Args) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): CFG with the unconditional noise scaled by
    ``alpha``, the projection of the conditional noise on it; the post-CFG correction of the
    plain CFG result that gives ``uncond * alpha + scale * (cond - uncond * alpha)``."""
    scale = args["cond_scale"]
    x = args["input"]
    cond, uncond = args["cond_denoised"], args["uncond_denoised"]
    alpha = optimized_scale(x - cond, x - uncond)
    return args["denoised"] + uncond * (alpha - 1.0) + scale * uncond * (1.0 - alpha)


# --- Mahiro (positive-biased guidance) ----------------------------------------------------------


def mahiro(args: Args) -> torch.Tensor:
    """Blend CFG with the plain scaled conditional prediction ("leap") by how similar the scaled
    unconditional prediction is to their mean (cosine similarity of signed square roots,
    averaged): similar -> keep CFG, dissimilar -> lean on the conditional direction."""
    scale = args["cond_scale"]
    leap = args["cond_denoised"] * scale
    u_leap = args["uncond_denoised"] * scale
    guided = args["denoised"]
    merge = (leap + guided) / 2
    signed_root_u = torch.sqrt(u_leap.abs()) * u_leap.sign()
    signed_root_m = torch.sqrt(merge.abs()) * merge.sign()
    similarity = F.cosine_similarity(signed_root_u, signed_root_m).mean()
    weight = 2 * (similarity + 1)  # 0 .. 4
    return (weight * guided + (4 - weight) * leap) / 4


# --- Tangential damping CFG (arXiv 2503.18137) --------------------------------------------------


def tangential_damping(cond_score: torch.Tensor, uncond_score: torch.Tensor) -> torch.Tensor:
    """The unconditional score projected on the first right-singular vector of the per-item
    ``[uncond; cond]`` matrix (its tangential part dropped)."""
    batch = cond_score.shape[0]
    cond_flat = cond_score.reshape(batch, 1, -1).float()
    uncond_flat = uncond_score.reshape(batch, 1, -1).float()
    matrix = torch.cat((uncond_flat, cond_flat), dim=1)
    try:
        _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    except RuntimeError:
        # Some accelerators have no batched SVD kernel.
        _, _, vh = torch.linalg.svd(matrix.cpu(), full_matrices=False)
    v1 = vh[:, 0:1, :].to(uncond_flat.device)
    damped = (uncond_flat @ v1.transpose(-2, -1)) * v1
    return damped.reshape_as(uncond_score).to(uncond_score.dtype)


def tangential_damping_cfg(args: Args) -> list[Any]:
    """TCFG's pre-CFG function: the unconditional prediction's noise damped by
    :func:`tangential_damping`; nothing changes when either prediction is skipped."""
    conds_out = args["conds_out"]
    if len(conds_out) <= 1 or None in args["conds"][:2]:
        return conds_out
    x = args["input"]
    cond, uncond = conds_out[0], conds_out[1]
    return [cond, x - tangential_damping(x - cond, x - uncond), *conds_out[2:]]


# --- FreSca (arXiv 2504.02154) ------------------------------------------------------------------


def fresca(scale_low: float, scale_high: float, freq_cutoff: int) -> PatchFunction:
    """A pre-CFG function scaling the guidance ``cond - uncond``'s low frequencies (the centred
    ``2 * cutoff`` box of its spectrum) by ``scale_low`` and the rest by ``scale_high``."""

    def fresca_guidance(args: Args) -> list[Any]:
        conds_out = args["conds_out"]
        if len(conds_out) <= 1 or None in args["conds"][:2]:
            return conds_out
        cond, uncond = conds_out[0], conds_out[1]
        guidance = cond - uncond
        height, width = guidance.shape[-2:]
        half_h, half_w = min(freq_cutoff, height // 2), min(freq_cutoff, width // 2)
        filtered = scale_frequencies(guidance, scale_low, scale_high, half_h, half_w)
        return [filtered + uncond, uncond, *conds_out[2:]]

    return fresca_guidance


# --- Epsilon scaling and temporal score rescaling -----------------------------------------------


def epsilon_scaling(scaling_factor: float) -> PatchFunction:
    """Epsilon scaling (Ning et al. 2023, arXiv 2308.15321, uniform schedule): the guided noise
    prediction divided by ``scaling_factor``."""
    factor = scaling_factor if scaling_factor != 0 else 1e-9

    def scale_epsilon(args: Args) -> torch.Tensor:
        x = args["input"]
        return x - (x - args["denoised"]) / factor

    return scale_epsilon


def half_log_snr(sigma: torch.Tensor, model_sampling: Any) -> torch.Tensor:
    """``log(alpha / sigma)`` of the schedule: ``-log(sigma)`` for the eps/v schedules,
    ``-logit(sigma)`` for flow schedules (the reference's ``CONST`` sampling)."""
    if any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__):
        return sigma.logit().neg()
    return sigma.log().neg()


def tsr_factor(snr: torch.Tensor, k: float, variance: float) -> torch.Tensor:
    """Temporal score rescaling's ratio ``r = (snr * var + 1) / (snr * var / k + 1)`` (arXiv
    2510.01184, eq. 6), ``k`` in the limit of infinite SNR."""
    ratio = (snr * variance + 1) / (snr * variance / k + 1)
    return torch.where(torch.isposinf(snr), torch.as_tensor(k, dtype=ratio.dtype), ratio)


def temporal_score_rescaling(tsr_k: float, tsr_sigma: float) -> PatchFunction:
    """A post-CFG function scaling the predicted noise by the TSR ratio: the result is
    ``lerp(x / alpha, denoised, r)``, i.e. ``(x - r * sigma * eps) / alpha`` in the model's
    parametrisation."""
    variance = tsr_sigma**2

    def rescale(args: Args) -> torch.Tensor:
        denoised = args["denoised"]
        x = args["input"]
        sigma = args["sigma"]
        if tsr_k == 1 or bool((sigma == 0).all()):
            return denoised
        model_sampling = args["model"].current_patcher.get_model_object("model_sampling")
        lam = half_log_snr(sigma, model_sampling)
        snr = (2 * lam).exp()
        if bool((snr == 0).all()):
            return denoised
        ratio = tsr_factor(snr, tsr_k, variance)
        alpha = sigma * lam.exp()
        shape = (-1,) + (1,) * (x.ndim - 1)
        return torch.lerp(x / alpha.reshape(shape), denoised, ratio.reshape(shape).to(denoised.dtype))

    return rescale


__all__ = [
    "AdaptiveProjectedGuidance",
    "cfg_norm_post",
    "cfg_norm_pre",
    "cfg_zero_star",
    "epsilon_scaling",
    "fresca",
    "half_log_snr",
    "mahiro",
    "optimized_scale",
    "project",
    "tangential_damping",
    "tangential_damping_cfg",
    "temporal_score_rescaling",
    "tsr_factor",
]
