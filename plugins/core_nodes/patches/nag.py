"""Normalized attention guidance (NAG, Chen et al. 2025, arXiv 2505.21179).

In every self-attention layer the conditional output ``z+`` is pushed away from the
unconditional one ``z-``: ``g = s * z+ - (s - 1) * z-``, its L1 norm per position capped at
``tau`` times ``z+``'s, and blended with ``z+`` by ``alpha``. The unconditional output stays as
it is.

The reference does this inside one batched model call holding both halves (``cond_or_uncond``
with 0 and 1). Our ``calc_cond_batch`` runs each prediction as its own call, so a
``calc_cond_batch`` wrapper runs the unconditional prediction first with a recording option
(each layer's ``z-`` kept by layer) and then the conditional one with those outputs to guide
against. The numbers are those of the batched computation; a chunk that does hold both halves
(a pack's own batching) is guided in place, as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch

# transformer_options keys that carry the recorded unconditional outputs between the two passes.
RECORD_KEY = "nag_record_uncond"
GUIDE_KEY = "nag_guide_with"
WRAPPER_KEY = "nag"


def guide(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, alpha: float, tau: float) -> torch.Tensor:
    """The NAG output for the conditional attention output ``z_pos`` given ``z_neg``."""
    guided = z_pos * scale - z_neg * (scale - 1.0)
    eps = 1e-6
    norm_pos = torch.norm(z_pos, p=1, dim=-1, keepdim=True).clamp_min(eps)
    norm_guided = torch.norm(guided, p=1, dim=-1, keepdim=True).clamp_min(eps)
    ratio = norm_guided / norm_pos
    guided = guided * (torch.minimum(ratio, torch.full_like(ratio, tau)) / ratio)
    return guided * alpha + z_pos * (1.0 - alpha)


def _layer(extra_options: dict[str, Any]) -> tuple[Any, ...]:
    block = extra_options.get("block")
    return (tuple(block) if block is not None else None, extra_options.get("block_index", 0))


class NormalizedAttentionGuidance:
    """The ``attn1_output_patch`` and the ``calc_cond_batch`` wrapper of one NAG node."""

    def __init__(self, scale: float, alpha: float, tau: float) -> None:
        self.scale = scale
        self.alpha = alpha
        self.tau = tau

    def output_patch(self, out: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        record = extra_options.get(RECORD_KEY)
        if record is not None:
            record[_layer(extra_options)] = out
            return out
        recorded = extra_options.get(GUIDE_KEY)
        if recorded is not None:
            z_neg = recorded.get(_layer(extra_options))
            if z_neg is None or z_neg.shape != out.shape:
                return out
            return guide(out, z_neg, self.scale, self.alpha, self.tau)
        return self._guide_batched(out, extra_options)

    def _guide_batched(self, out: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        """The reference's case: one chunk of the batch conditional, another unconditional."""
        cond_or_uncond = extra_options.get("cond_or_uncond")
        if not cond_or_uncond or 1 not in cond_or_uncond or 0 not in cond_or_uncond:
            return out
        img_slice = extra_options.get("img_slice")
        part = out if img_slice is None else out[:, img_slice[0] : img_slice[1]]
        size = part.shape[0] // len(cond_or_uncond)
        pos, neg = cond_or_uncond.index(0), cond_or_uncond.index(1)
        pos_rows = slice(size * pos, size * (pos + 1))
        z_final = guide(part[pos_rows], part[size * neg : size * (neg + 1)], self.scale, self.alpha, self.tau)
        out = out.clone()
        if img_slice is None:
            out[pos_rows] = z_final
        else:
            # The reference writes the guided image tokens into both chunks of a DiT's output.
            out[size * neg : size * (neg + 1), img_slice[0] : img_slice[1]] = z_final
            out[pos_rows, img_slice[0] : img_slice[1]] = z_final
        return out

    def calc_cond_batch_wrapper(
        self,
        executor: Any,
        model: Any,
        conds: list[Any],
        x_in: torch.Tensor,
        timestep: torch.Tensor,
        model_options: dict[str, Any],
    ) -> list[torch.Tensor]:
        if len(conds) < 2 or conds[0] is None or conds[1] is None:
            return executor(model, conds, x_in, timestep, model_options)
        recorded: dict[Any, torch.Tensor] = {}
        rest = [None] * (len(conds) - 2)
        uncond_out = executor(model, [None, conds[1], *rest], x_in, timestep, _with(model_options, RECORD_KEY, recorded))
        guided = executor(model, [conds[0], None, *conds[2:]], x_in, timestep, _with(model_options, GUIDE_KEY, recorded))
        return [guided[0], uncond_out[1], *guided[2:]]


def _with(model_options: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``model_options`` with ``transformer_options[key] = value``."""
    options = dict(model_options)
    options["transformer_options"] = {**model_options.get("transformer_options", {}), key: value}
    return options


__all__ = ["GUIDE_KEY", "RECORD_KEY", "WRAPPER_KEY", "NormalizedAttentionGuidance", "guide"]
