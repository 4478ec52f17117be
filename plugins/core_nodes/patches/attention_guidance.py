"""Guidance from a second model pass with changed attention: self-attention guidance (SAG),
perturbed-attention guidance (PAG) and skip-layer guidance for DiT models (SLG).

Each is a post-CFG function that runs the model once more through ``comfy.samplers.
calc_cond_batch`` (a pack's replacement honoured) with extra entries in the model options:

* SAG (Hong et al. 2023, arXiv 2210.00939) records the unconditional pass's middle-block
  self-attention map (an ``attn1`` replacement at ``("middle", 0, 0)``), blurs the unconditional
  prediction where that map is strong, re-noises it and predicts again; the result moves away
  from that degraded prediction: ``cfg + scale * (degraded - sag)``;
* PAG (Ahn et al. 2024, arXiv 2403.17377) predicts the conditional again with the middle
  block's self-attention replaced by the identity (``softmax -> I``, so the output is ``v``):
  ``cfg + scale * (cond - pag)``;
* SLG predicts the conditional again with DiT layers skipped (``patches_replace["dit"]``); a
  UNet has no such layers, so on SD1/SDXL the pass equals the conditional prediction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from plugins.core_nodes.cfg import calc_cond_batch
from plugins.core_nodes.models import attention
from plugins.core_nodes.models.patcher import set_model_options_patch_replace
from plugins.core_nodes.patchpoints import lookup

Args = dict[str, Any]
# The reference's SAG constants: the attention-mass threshold and the blur kernel's size.
SAG_THRESHOLD = 1.0
SAG_KERNEL = 9


def _calc_cond_batch() -> Callable[..., list[torch.Tensor]]:
    return lookup("comfy.samplers", "calc_cond_batch", calc_cond_batch)


# --- SAG ----------------------------------------------------------------------------------------


def attention_with_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, attn_precision: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``[B, N, heads * d]`` and its softmaxed scores ``[B * heads, N, M]`` (batch-major)."""
    b, _, inner = q.shape
    dim = inner // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, dim).permute(0, 2, 1, 3).reshape(b * heads, -1, dim)

    qh, kh, vh = split(q), split(k), split(v)
    if attn_precision == torch.float32:
        qh, kh = qh.float(), kh.float()
    scores = (qh @ kh.transpose(-1, -2) * dim**-0.5).softmax(dim=-1)
    out = scores.to(vh.dtype) @ vh
    out = out.reshape(b, heads, -1, dim).permute(0, 2, 1, 3).reshape(b, -1, heads * dim)
    return out, scores


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """A separable-kernel Gaussian blur per channel of ``x`` ``[B, C, H, W]``, reflect-padded."""
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (offsets / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(device=x.device, dtype=x.dtype)
    kernel = torch.outer(kernel1d, kernel1d).expand(x.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(x, [pad, pad, pad, pad], mode="reflect"), kernel, groups=x.shape[-3])


def _grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) a middle block of ``tokens`` positions has for a ``height x width``
    latent: the divisor of ``tokens`` nearest ``sqrt(tokens * height / width)``."""
    guess = round(math.sqrt((height / width) * tokens))
    for i in range(math.floor(math.sqrt(tokens) / 2)):
        for rows in (guess + i, max(1, guess - i)):
            if tokens % rows == 0:
                return rows, tokens // rows
    raise ValueError(f"cannot lay {tokens} attention positions out on a {height}x{width} latent")


def degrade(x0: torch.Tensor, scores: torch.Tensor, sigma: float, threshold: float = SAG_THRESHOLD) -> torch.Tensor:
    """``x0`` blurred where the attention ``scores`` ``[B * heads, N, N]`` are concentrated: the
    positions whose head-averaged score summed over the queries exceeds ``threshold``."""
    b, _, height, width = x0.shape
    tokens = scores.shape[-1]
    mass = scores.reshape(b, -1, scores.shape[-2], tokens).mean(1).sum(1)
    rows, cols = _grid(tokens, height, width)
    mask = (mass > threshold).reshape(b, rows, cols).unsqueeze(1).to(scores.dtype)
    mask = F.interpolate(mask, (height, width)).to(x0.dtype)
    blurred = gaussian_blur(x0, SAG_KERNEL, sigma)
    return blurred * mask + x0 * (1 - mask)


class SelfAttentionGuidance:
    """SAG's two patches sharing the recorded map: :meth:`attention` (the middle block's
    ``attn1`` replacement) and :meth:`post_cfg`."""

    def __init__(self, scale: float, blur_sigma: float) -> None:
        self.scale = scale
        self.blur_sigma = blur_sigma
        self.scores: torch.Tensor | None = None

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: Args) -> torch.Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        cond_or_uncond = extra_options["cond_or_uncond"]
        if 1 not in cond_or_uncond:
            return attention.current()(q, k, v, heads, attn_precision=precision)
        out, scores = attention_with_scores(q, k, v, heads, precision)
        # The unconditional chunk's maps (chunks are batch-major, heads within an item).
        per_chunk = heads * (q.shape[0] // len(cond_or_uncond))
        index = cond_or_uncond.index(1)
        self.scores = scores[per_chunk * index : per_chunk * (index + 1)]
        return out

    def post_cfg(self, args: Args) -> torch.Tensor:
        guided = args["denoised"]
        if min(guided.shape[2:]) <= 4 or self.scores is None:
            # Too small for the blur's padding, or no unconditional pass ran.
            return guided
        uncond_pred = args["uncond_denoised"]
        x = args["input"]
        degraded = degrade(uncond_pred, self.scores, self.blur_sigma)
        noised = degraded + x - uncond_pred
        (sag,) = _calc_cond_batch()(args["model"], [args["uncond"]], noised, args["sigma"], args["model_options"])
        return guided + (degraded - sag) * self.scale


# --- PAG ----------------------------------------------------------------------------------------


def identity_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: Args, mask: Any = None
) -> torch.Tensor:
    """Self-attention with an identity attention matrix: every position keeps its own value."""
    return v


def perturbed_attention_guidance(scale: float, block: str = "middle", number: int = 0) -> Callable[[Args], torch.Tensor]:
    """PAG's post-CFG function (the perturbed pass replaces ``attn1`` of ``(block, number)``)."""

    def post_cfg(args: Args) -> torch.Tensor:
        guided = args["denoised"]
        if scale == 0:
            return guided
        options = set_model_options_patch_replace(dict(args["model_options"]), identity_attention, "attn1", block, number)
        (pag,) = _calc_cond_batch()(args["model"], [args["cond"]], args["input"], args["sigma"], options)
        return guided + (args["cond_denoised"] - pag) * scale

    return post_cfg


# --- SLG ----------------------------------------------------------------------------------------


def layer_numbers(text: str) -> list[int]:
    """Every run of digits in ``text`` (``"7, 8, 9"`` -> [7, 8, 9]), as the reference reads them."""
    return [int(n) for n in re.findall(r"\d+", text)]


def skip_layer(args: Any, extra_args: Any) -> Any:
    """A DiT block replacement that returns its input: the layer is skipped."""
    return args


def with_skipped_layers(model_options: Args, double_layers: list[int], single_layers: list[int]) -> Args:
    """A copy of ``model_options`` whose ``patches_replace["dit"]`` skips these blocks."""
    options = dict(model_options)
    for layer in double_layers:
        options = set_model_options_patch_replace(options, skip_layer, "dit", "double_block", layer)
    for layer in single_layers:
        options = set_model_options_patch_replace(options, skip_layer, "dit", "single_block", layer)
    return options


def skip_layer_guidance(
    double_layers: list[int],
    single_layers: list[int],
    scale: float,
    sigma_start: float,
    sigma_end: float,
    rescaling_scale: float,
) -> Callable[[Args], torch.Tensor]:
    """SLG's post-CFG function: between the two sigmas, ``cfg + scale * (cond - skipped)``,
    optionally rescaled towards the conditional prediction's standard deviation."""

    def post_cfg(args: Args) -> torch.Tensor:
        guided = args["denoised"]
        sigma = float(args["sigma"][0])
        if scale > 0 and sigma_end <= sigma <= sigma_start:
            options = with_skipped_layers(args["model_options"], double_layers, single_layers)
            cond_pred = args["cond_denoised"]
            (skipped,) = _calc_cond_batch()(args["model"], [args["cond"]], args["input"], args["sigma"], options)
            guided = guided + (cond_pred - skipped) * scale
            if rescaling_scale != 0:
                factor = cond_pred.std() / guided.std()
                guided = guided * (rescaling_scale * factor + (1 - rescaling_scale))
        return guided

    return post_cfg


def skip_layer_uncond(
    double_layers: list[int], single_layers: list[int], sigma_start: float, sigma_end: float
) -> Callable[[Args], list[torch.Tensor]]:
    """SLG-simple's ``sampler_calc_cond_batch_function``: between the two sigmas the
    unconditional prediction runs with the layers skipped, the conditional one as usual."""

    def calc(args: Args) -> list[torch.Tensor]:
        x, model, conds, sigma = args["input"], args["model"], args["conds"], args["sigma"]
        options = args["model_options"]
        batch = _calc_cond_batch()
        cond, uncond = conds
        level = float(sigma[0])
        if sigma_end <= level <= sigma_start and uncond is not None:
            cond_out, _ = batch(model, [cond, None], x, sigma, options)
            skipped = with_skipped_layers(options, double_layers, single_layers)
            _, uncond_out = batch(model, [None, uncond], x, sigma, skipped)
            return [cond_out, uncond_out]
        return batch(model, conds, x, sigma, options)

    return calc


__all__ = [
    "SelfAttentionGuidance",
    "attention_with_scores",
    "degrade",
    "gaussian_blur",
    "identity_attention",
    "layer_numbers",
    "perturbed_attention_guidance",
    "skip_layer",
    "skip_layer_guidance",
    "skip_layer_uncond",
    "with_skipped_layers",
]
