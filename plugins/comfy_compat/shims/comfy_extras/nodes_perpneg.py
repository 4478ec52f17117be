"""``comfy_extras.nodes_perpneg``: the Perp-Neg guidance helpers packs subclass or call.

``perp_neg`` and ``Guider_PerpNeg`` are defined here (Inspire-Pack imports the guider); the node
classes of the reference module come from the kernel's registry when it has them.
"""

from __future__ import annotations

import math
from typing import Any

import comfy.samplers
import node_helpers
import torch
from comfy_extras._exports import module_attributes


def perp_neg(
    x: torch.Tensor,
    noise_pred_pos: torch.Tensor,
    noise_pred_neg: torch.Tensor,
    noise_pred_nocond: torch.Tensor,
    neg_scale: float,
    cond_scale: float,
) -> torch.Tensor:
    """CFG whose negative direction is first made perpendicular to the positive one.

    Both predictions are taken relative to the empty prompt's; the negative loses its component
    along the positive, and what is left is subtracted with weight ``neg_scale``.
    """
    positive = noise_pred_pos - noise_pred_nocond
    negative = noise_pred_neg - noise_pred_nocond
    along = (negative * positive).sum() / torch.norm(positive) ** 2
    perpendicular = negative - along * positive
    return noise_pred_nocond + cond_scale * (positive - perpendicular * neg_scale)


class Guider_PerpNeg(comfy.samplers.CFGGuider):  # noqa: N801 - the reference's class name
    """A guider running positive, negative and empty prompts in one batch, combined by :func:`perp_neg`."""

    neg_scale = 1.0

    def set_conds(self, positive: Any, negative: Any, empty_negative_prompt: Any) -> None:  # type: ignore[override]
        empty = node_helpers.conditioning_set_values(empty_negative_prompt, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": positive, "empty_negative_prompt": empty, "negative": negative})

    def set_cfg(self, cfg: float, neg_scale: float) -> None:  # type: ignore[override]
        self.cfg = cfg
        self.neg_scale = neg_scale

    def predict_noise(
        self, x: torch.Tensor, timestep: torch.Tensor, model_options: Any = None, seed: int | None = None
    ) -> torch.Tensor:
        options = self.model_options if model_options is None else model_options
        positive = self.conds.get("positive")
        negative = self.conds.get("negative")
        empty = self.conds.get("empty_negative_prompt")
        # Skipped predictions cost nothing: no negative at neg_scale 0, and no empty at cfg 1 too.
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            negative = None
            if math.isclose(self.cfg, 1.0):
                empty = None
        conds = [positive, negative, empty]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        # sampling_function is bypassed, so its pre- and post-CFG hooks are run here.
        for hook in options.get("sampler_pre_cfg_function", []):
            out = hook(
                {
                    "conds": conds,
                    "conds_out": out,
                    "cond_scale": self.cfg,
                    "timestep": timestep,
                    "input": x,
                    "sigma": timestep,
                    "model": self.inner_model,
                    "model_options": options,
                }
            )
        pred_pos, pred_neg, pred_empty = out
        result = perp_neg(x, pred_pos, pred_neg, pred_empty, self.neg_scale, self.cfg)
        for hook in options.get("sampler_post_cfg_function", []):
            result = hook(
                {
                    "denoised": result,
                    "cond": positive,
                    "uncond": negative,
                    "cond_scale": self.cfg,
                    "model": self.inner_model,
                    "uncond_denoised": pred_neg,
                    "cond_denoised": pred_pos,
                    "sigma": timestep,
                    "model_options": options,
                    "input": x,
                    "empty_cond": empty,
                    "empty_cond_denoised": pred_empty,
                }
            )
        return result


__getattr__, __dir__ = module_attributes(__name__, {"perp_neg": perp_neg, "Guider_PerpNeg": Guider_PerpNeg})
