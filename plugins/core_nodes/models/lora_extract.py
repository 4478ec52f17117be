"""LoRA extraction: the weight differences a MODEL / CLIP carries, as a LoRA file's tensors.

The input is normally a subtraction (``ModelMergeSubtract`` / ``CLIPMergeSubtract``): its merged
weights *are* the differences. Each 2-D or 4-D weight difference becomes a rank-``r`` pair from
its SVD (``up = U_r diag(S_r)``, ``down = V_r^T``; a 3x3 convolution's difference is flattened to
``out x (in * 9)`` first and the pair reshaped to a 1x1 ``up`` and a 3x3 ``down``), both clamped to
``[-q, q]`` with ``q`` the 0.99 quantile of their entries taken together (the reference's rule:
it trims the few outliers).
Vectors (norms) and, with ``bias_diff``, biases are written as full differences (``.diff`` /
``.diff_b``); ``full_diff`` writes every weight as a full difference. Tensors are stored in fp16.

Keys: ``diffusion_model.<module>.lora_up.weight`` ... for the UNet and
``text_encoders.clip_l.transformer.text_model.<module>...`` for the text encoders, as the reference
writes them (both read back by ``LoraLoader``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from plugins.core_nodes.models.saving import text_weights, unet_weights

log = logging.getLogger("comfykernel.core_nodes")

CLAMP_QUANTILE = 0.99
LORA_TYPES = ("standard", "full_diff")


def extract_lora(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down)`` of rank ``min(rank, out, in)`` approximating ``diff`` (see the module docstring)."""
    conv = diff.ndim == 4
    kernel = tuple(diff.shape[2:4]) if conv else None
    out_dim, in_dim = int(diff.shape[0]), int(diff.shape[1])
    rank = min(rank, in_dim, out_dim)
    matrix = diff.float()
    if conv:
        matrix = matrix.flatten(start_dim=1) if kernel != (1, 1) else matrix.reshape(out_dim, in_dim)
    u, s, vh = torch.linalg.svd(matrix)
    up = u[:, :rank] @ torch.diag(s[:rank])
    down = vh[:rank, :]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), CLAMP_QUANTILE)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if conv:
        assert kernel is not None
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, kernel[0], kernel[1])
    return up, down


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().half().cpu()


def lora_tensors(
    weights: Mapping[str, torch.Tensor],
    prefix: str,
    rank: int,
    lora_type: str,
    bias_diff: bool,
    progress: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The LoRA keys for one model's difference weights (by parameter name), under ``prefix``."""
    if lora_type not in LORA_TYPES:
        raise ValueError(f"lora_type must be one of {', '.join(LORA_TYPES)}, not {lora_type!r}")
    out: dict[str, torch.Tensor] = {}
    for key, diff in weights.items():
        if progress is not None:
            progress()
        module, _, kind = key.rpartition(".")
        if not module or kind not in ("weight", "bias") or (kind == "bias" and not bias_diff):
            continue
        name = prefix + module
        if kind == "bias":
            out[name + ".diff_b"] = _fp16(diff)
        elif lora_type == "full_diff":
            out[name + ".diff"] = _fp16(diff)
        elif diff.ndim < 2:
            if bias_diff:
                out[name + ".diff"] = _fp16(diff)
        else:
            try:
                up, down = extract_lora(diff, rank)
            except (RuntimeError, ValueError, torch.linalg.LinAlgError) as e:
                log.warning("LoRA extraction: no low-rank pair for %s (%s); is its difference zero?", key, e)
                continue
            out[name + ".lora_up.weight"] = _fp16(up)
            out[name + ".lora_down.weight"] = _fp16(down)
    return out


def extract(
    model_diff: Any,
    clip_diff: Any,
    rank: int,
    lora_type: str,
    bias_diff: bool,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The whole LoRA file's tensors from a MODEL and / or a CLIP difference."""
    parts: list[tuple[Mapping[str, torch.Tensor], str]] = []
    if model_diff is not None:
        parts.append((unet_weights(model_diff), "diffusion_model."))
    if clip_diff is not None:
        for name, weights in text_weights(clip_diff).items():
            # The reference's module paths: text_projection sits beside text_model.
            named = {k if k.startswith("text_projection.") else "text_model." + k: v for k, v in weights.items()}
            parts.append((named, f"text_encoders.clip_{name}.transformer."))
    total = sum(len(weights) for weights, _ in parts)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    out: dict[str, torch.Tensor] = {}
    for weights, prefix in parts:
        out.update(lora_tensors(weights, prefix, rank, lora_type, bias_diff, step))
    return out


__all__ = ["CLAMP_QUANTILE", "LORA_TYPES", "extract", "extract_lora", "lora_tensors"]
