"""Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968): the negative prompt's direction taken
perpendicular to the positive one, both measured from an empty prompt's prediction.

Two forms, as in the reference: a CFG function for a MODEL (the deprecated ``PerpNeg`` node,
which evaluates the empty prompt itself) and a guider that evaluates the three prompts in one
``calc_cond_batch`` (``PerpNegGuider``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from plugins.core_nodes.cfg import calc_cond_batch, run_post_cfg, run_pre_cfg
from plugins.core_nodes.cond_prep import convert_cond, encode_model_conds
from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.patchpoints import lookup

Args = dict[str, Any]


def perp_neg(
    x: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    nocond: torch.Tensor,
    neg_scale: float,
    cond_scale: float,
) -> torch.Tensor:
    """The guided prediction ``nocond + scale * (p - neg_scale * n_perp)`` with ``p = pos -
    nocond``, ``n = neg - nocond`` and ``n_perp = n - <n, p> / ||p||^2 * p`` (the inner product
    and norm over the whole batch, as the reference takes them). ``x`` is unused (the
    reference's signature)."""
    p = pos - nocond
    n = neg - nocond
    perpendicular = n - ((n * p).sum() / torch.norm(p) ** 2) * p
    return nocond + cond_scale * (p - perpendicular * neg_scale)


def _calc_cond_batch() -> Callable[..., list[torch.Tensor]]:
    # A pack's replacement of comfy.samplers.calc_cond_batch is honoured, as the reference's
    # module attribute lookup would.
    return lookup("comfy.samplers", "calc_cond_batch", calc_cond_batch)


def perp_neg_cfg_function(empty_conditioning: list[list[Any]], neg_scale: float) -> Callable[[Args], torch.Tensor]:
    """The ``PerpNeg`` node's CFG function: evaluates ``empty_conditioning`` at each step (its
    model conds encoded for the latent as a negative prompt's) and returns the Perp-Neg result
    as a noise prediction (``input - denoised``)."""
    nocond = convert_cond(empty_conditioning)

    def cfg_function(args: Args) -> torch.Tensor:
        model = args["model"]
        x = args["input"]
        sigma = args["sigma"]
        encoded = encode_model_conds(model.extra_conds, list(nocond), x, x.device, "negative")
        (nocond_pred,) = _calc_cond_batch()(model, [encoded], x, sigma, args["model_options"])
        guided = perp_neg(
            x, args["cond_denoised"], args["uncond_denoised"], nocond_pred, neg_scale, args["cond_scale"]
        )
        return x - guided

    return cfg_function


def _as_negative(conditioning: list[list[Any]]) -> list[list[Any]]:
    """Copies of the entries marked ``prompt_type: negative`` (the reference marks the empty prompt so)."""
    return [[cond, {**options, "prompt_type": "negative"}] for cond, options in conditioning]


class PerpNegGuider(CFGGuider):
    """The reference's ``Guider_PerpNeg``: positive, negative and empty prompts in one batch
    evaluation, the MODEL's pre-CFG functions on the three predictions, :func:`perp_neg`, then
    its post-CFG functions (which also get ``empty_cond`` and ``empty_cond_denoised``)."""

    neg_scale: float = 1.0

    def set_conds(  # type: ignore[override]
        self, positive: list[list[Any]], negative: list[list[Any]], empty_negative_prompt: list[list[Any]]
    ) -> None:
        self.inner_set_conds(
            {"positive": positive, "empty_negative_prompt": _as_negative(empty_negative_prompt), "negative": negative}
        )

    def set_cfg(self, cfg: float, neg_scale: float = 1.0) -> None:  # type: ignore[override]
        self.cfg = float(cfg)
        self.neg_scale = float(neg_scale)

    def predict_noise(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        model_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        options = self.model_options if model_options is None else model_options
        positive = self.conds.get("positive")
        negative = self.conds.get("negative")
        empty = self.conds.get("empty_negative_prompt")
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            # The negative's weight is 0; at cfg 1 the empty prompt's is too.
            negative = None
            if math.isclose(self.cfg, 1.0):
                empty = None
        conds = [positive, negative, empty]
        out = _calc_cond_batch()(self.inner_model, conds, x, timestep, options)
        out = run_pre_cfg(options, conds, out, self.cfg, x, timestep, self.inner_model)
        pos_pred, neg_pred, empty_pred = out
        result = perp_neg(x, pos_pred, neg_pred, empty_pred, self.neg_scale, self.cfg)
        # The post-CFG functions also get the empty prompt and its prediction.
        return run_post_cfg(
            options, result, self.inner_model, positive, negative, pos_pred, neg_pred, self.cfg, x, timestep,
            empty_cond=empty, empty_cond_denoised=empty_pred,
        )  # fmt: skip


__all__ = ["PerpNegGuider", "perp_neg", "perp_neg_cfg_function"]
