"""Noise-level conversions that depend on the model sampling: eps-style models vs rectified flow.

The exponential-integrator samplers work in half-log-SNR time, lambda = log(alpha / sigma). For
the eps/v schedules the sampler's x is x0 + sigma * noise, so alpha is 1 and lambda = -log sigma.
A rectified-flow model (the reference's ``CONST`` prediction: SD3, Flux, AuraFlow ...) samples
x = (1 - sigma) * x0 + sigma * noise, so alpha = 1 - sigma and lambda = log((1 - sigma) / sigma),
which is -logit(sigma) and is undefined at sigma = 1, the top of every flow schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from .model_sampling import CONST
from .prediction import ImgToImgFlowSampling

# How far below the top of a flow schedule the SNR-based samplers start (a fraction of the
# schedule, through ``percent_to_sigma``), so their first lambda is finite.
FIRST_SIGMA_PERCENT_OFFSET = 1e-4


def is_flow(model_sampling: Any) -> bool:
    """Whether ``model_sampling`` samples a rectified flow. The reference tests for its ``CONST``
    class; our ModelSamplingDiscrete node's ``img_to_img_flow`` choice is the same kind of model
    (the reference builds it on ``IMG_TO_IMG_FLOW``, a ``CONST``), so it counts too."""
    return isinstance(model_sampling, (CONST, ImgToImgFlowSampling))


def flow_half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log((1 - sigma) / sigma) of a rectified flow."""
    return sigma.logit().neg()


def flow_sigma(half_log_snr: torch.Tensor) -> torch.Tensor:
    """The flow sigma of half-log-SNR ``half_log_snr``: 1 / (1 + exp(lambda))."""
    return half_log_snr.neg().sigmoid()


def sigma_to_half_log_snr(sigma: torch.Tensor, model_sampling: Any) -> torch.Tensor:
    """lambda = log(alpha / sigma) of noise level ``sigma`` under ``model_sampling``."""
    if is_flow(model_sampling):
        return flow_half_log_snr(sigma)
    return sigma.log().neg()


def half_log_snr_to_sigma(half_log_snr: torch.Tensor, model_sampling: Any) -> torch.Tensor:
    """The inverse of :func:`sigma_to_half_log_snr`: sigmoid(-lambda) for flow, exp(-lambda) else."""
    if is_flow(model_sampling):
        return flow_sigma(half_log_snr)
    return half_log_snr.neg().exp()


def offset_first_sigma_for_snr(
    sigmas: torch.Tensor, model_sampling: Any, percent_offset: float = FIRST_SIGMA_PERCENT_OFFSET
) -> torch.Tensor:
    """``sigmas`` with a flow schedule's first entry moved just below 1 (where lambda is -inf),
    to the sigma ``percent_offset`` of the way into the schedule. A copy; other schedules and
    flow schedules that start lower come back unchanged."""
    if len(sigmas) <= 1 or not is_flow(model_sampling) or sigmas[0] < 1:
        return sigmas
    moved = sigmas.clone()
    moved[0] = model_sampling.percent_to_sigma(percent_offset)
    return moved


def flow_ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ancestral split of a rectified-flow step from ``sigma`` to ``sigma_next``.

    Returns ``(sigma_down, signal_ratio, renoise)``: the sampler moves deterministically to
    ``sigma_down`` (``sigma_next`` shrunk by the factor 1 + (sigma_next / sigma - 1) * eta), then
    scales x by ``signal_ratio`` = (1 - sigma_next) / (1 - sigma_down) so the x0 part has the
    weight it has at ``sigma_next``, and adds fresh noise of standard deviation ``renoise``,
    chosen so the noise parts add up to ``sigma_next``:
    (sigma_down * signal_ratio)^2 + renoise^2 = sigma_next^2.
    """
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise
