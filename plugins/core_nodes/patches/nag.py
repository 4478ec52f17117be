"""Normalized attention guidance (NAG, Chen et al. 2025, arXiv 2505.21179).

In every self-attention layer the conditional output ``z+`` is pushed away from the
unconditional one ``z-``: ``g = s * z+ - (s - 1) * z-``, its L1 norm per position capped at
``tau`` times ``z+``'s, and blended with ``z+`` by ``alpha``. The unconditional output stays as
it is. As in the reference this works on a model call that holds both (``cond_or_uncond`` with
0 and 1, which ``calc_cond_batch`` gives when the two prompts share a region and fit in memory
together); a call with only one of them is left alone.
"""

from __future__ import annotations

from typing import Any

import torch


def guide(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, alpha: float, tau: float) -> torch.Tensor:
    """The NAG output for the conditional attention output ``z_pos`` given ``z_neg``."""
    guided = z_pos * scale - z_neg * (scale - 1.0)
    eps = 1e-6
    norm_pos = torch.norm(z_pos, p=1, dim=-1, keepdim=True).clamp_min(eps)
    norm_guided = torch.norm(guided, p=1, dim=-1, keepdim=True).clamp_min(eps)
    ratio = norm_guided / norm_pos
    guided = guided * (torch.minimum(ratio, torch.full_like(ratio, tau)) / ratio)
    return guided * alpha + z_pos * (1.0 - alpha)


def nag_output_patch(scale: float, alpha: float, tau: float) -> Any:
    """NAG's ``attn1_output_patch`` ``(out, extra_options) -> out``."""

    def output_patch(out: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        cond_or_uncond = extra_options.get("cond_or_uncond")
        if not cond_or_uncond or 1 not in cond_or_uncond or 0 not in cond_or_uncond:
            return out
        img_slice = extra_options.get("img_slice")
        part = out if img_slice is None else out[:, img_slice[0] : img_slice[1]]
        size = part.shape[0] // len(cond_or_uncond)
        pos, neg = cond_or_uncond.index(0), cond_or_uncond.index(1)
        pos_rows, neg_rows = slice(size * pos, size * (pos + 1)), slice(size * neg, size * (neg + 1))
        z_final = guide(part[pos_rows], part[neg_rows], scale, alpha, tau)
        out = out.clone()
        if img_slice is None:
            out[pos_rows] = z_final
        else:
            # The reference writes the guided image tokens into both chunks of a DiT's output.
            out[neg_rows, img_slice[0] : img_slice[1]] = z_final
            out[pos_rows, img_slice[0] : img_slice[1]] = z_final
        return out

    return output_patch


__all__ = ["guide", "nag_output_patch"]
