"""``comfy.sampler_helpers``: the reference's helpers around a sampling run.

This server loads models on use (its model manager), so the load / cleanup helpers have nothing
to do: they keep the reference's signatures and return values so packs that call them around
their own sampling keep working. ``convert_cond`` is the core sampler's own (CONDITIONING ->
cond dicts) and ``prepare_mask`` computes what the reference's does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from plugins.core_nodes.cond_prep import convert_cond
from plugins.core_nodes.sampling.masks import prepare_mask as _prepare_mask

__all__ = [
    "cleanup_additional_models",
    "cleanup_models",
    "convert_cond",
    "get_additional_models",
    "get_models_from_cond",
    "prepare_mask",
    "prepare_sampling",
]


def get_models_from_cond(cond: Iterable[Any], model_type: str) -> list[Any]:
    """The ``model_type`` objects (``control``, ``gligen``...) the cond entries carry."""
    models = []
    for entry in cond:
        options = entry[1] if isinstance(entry, list | tuple) else entry
        if isinstance(options, dict) and model_type in options:
            models.append(options[model_type])
    return models


def get_additional_models(conds: dict[str, Any], dtype: Any) -> tuple[list[Any], int]:
    """``(models, inference_memory)``: no extra models need loading here, so ``([], 0)``."""
    return [], 0


def cleanup_additional_models(models: Iterable[Any]) -> None:
    """Call ``cleanup()`` on each model that has one, as the reference does."""
    for model in models:
        cleanup = getattr(model, "cleanup", None)
        if callable(cleanup):
            cleanup()


def prepare_sampling(
    model: Any,
    noise_shape: Sequence[int],
    conds: Any,
    model_options: Any = None,
    force_full_load: bool = False,
) -> tuple[Any, Any, list[Any]]:
    """``(inner model, conds, loaded models)``: the MODEL's ``model`` view, the conds unchanged
    and no extra models (weights are moved to the device when the sampler calls the model)."""
    return getattr(model, "model", model), conds, []


def cleanup_models(conds: Any, models: Iterable[Any]) -> None:
    cleanup_additional_models(models)


def prepare_mask(noise_mask: torch.Tensor, shape: Sequence[int], device: Any) -> torch.Tensor:
    """A LATENT's ``noise_mask`` at the latent's ``shape`` (per channel and batch item)."""
    return _prepare_mask(noise_mask, shape).to(device)
