"""Guidance patch nodes (APG, CFGNorm, CFGZeroStar, Mahiro, TCFG, FreSca, epsilon scaling, TSR,
Perp-Neg, SAG, PAG, NAG, skip-layer guidance) on the tiny random-weight SD1 model.

Each node's MODEL is run through the real guider (``CFGGuider`` -> ``sampling_function`` ->
``calc_cond_batch`` -> the UNet) and its guided prediction compared with the published formula,
written out here, applied to the unpatched model's predictions. The perturbed passes of SAG and
PAG are recomputed through a different mechanism (an object-patched attention module). One
prompt chains patches through the real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from plugins.core_nodes.cfg import calc_cond_batch
from plugins.core_nodes.guidance import CFGGuider
from plugins.core_nodes.models import adapters
from plugins.core_nodes.nodes import guidance_patches as gp
from plugins.core_nodes.patches.attention_guidance import gaussian_blur
from plugins.core_nodes.patches.cfg_rules import AdaptiveProjectedGuidance
from plugins.core_nodes.patches.nag import nag_output_patch

from .node_helpers import run_ok, saved_latents, start_with_models
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIGMA = 3.0
CFG = 5.0
WIDTH = 64  # the tiny SD1 checkpoint's text width


@pytest.fixture(scope="module")
def model(checkpoints: dict[str, Path]) -> Iterator[Any]:  # noqa: F811
    torch.set_num_threads(1)
    unet, _, _ = adapters.load_checkpoint(checkpoints["sd1"])
    yield unet


def _text(seed: int) -> list[list[Any]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, WIDTH, generator=g), {}]]


POS, NEG, EMPTY = _text(1), _text(2), _text(3)


def _latent(seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, size, size, generator=g) * SIGMA, torch.tensor([SIGMA])


def guided(model: Any, x: torch.Tensor, sigma: torch.Tensor, cfg: float = CFG) -> torch.Tensor:
    """The MODEL's guided x0 prediction, as the samplers ask the guider for it."""
    guider = CFGGuider(model)
    guider.set_conds(POS, NEG)
    guider.set_cfg(cfg)
    guider.prepare(x)
    return guider(x, sigma)


def predictions(model: Any, x: torch.Tensor, sigma: torch.Tensor, *prompts: list[list[Any]]) -> list[torch.Tensor]:
    """The MODEL's plain x0 prediction for each prompt (one ``calc_cond_batch``)."""
    guider = CFGGuider(model)
    names = [f"p{i}" for i in range(len(prompts))]
    guider.inner_set_conds(dict(zip(names, prompts, strict=True)))
    guider.prepare(x)
    return calc_cond_batch(guider.inner_model, [guider.conds[n] for n in names], x, sigma, model.model_options)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def plain(model: Any) -> dict[str, torch.Tensor]:
    x, sigma = _latent()
    cond, uncond = predictions(model, x, sigma, POS, NEG)
    return {"x": x, "sigma": sigma, "cond": cond, "uncond": uncond, "cfg": uncond + CFG * (cond - uncond)}


def test_unpatched_guider_is_plain_cfg(model: Any, plain: dict[str, torch.Tensor]) -> None:
    close(guided(model, plain["x"], plain["sigma"]), plain["cfg"])


# --- CFG arithmetic --------------------------------------------------------------------------


def _apg_formula(cond: torch.Tensor, uncond: torch.Tensor, scale: float, eta: float, r: float) -> torch.Tensor:
    """APG (Sadat et al. 2024, eqs. 7-9, with their w = cfg + 1): g = cond - uncond clipped to
    L2 norm r, split into g_par (along cond) and g_orth; D = cond + cfg * (g_orth + eta g_par)."""
    g = cond - uncond
    g = g * min(1.0, r / float(g.norm()))
    u = cond / cond.norm()
    g_par = (g * u).sum() * u
    return cond + scale * ((g - g_par) + eta * g_par)


@pytest.mark.parametrize(("eta", "threshold"), [(0.0, 5.0), (1.0, 0.0), (0.5, 1e9)])
def test_apg(model: Any, plain: dict[str, torch.Tensor], eta: float, threshold: float) -> None:
    (m,) = gp.APG().patch(model, eta, threshold, 0.0)
    got = guided(m, plain["x"], plain["sigma"])
    r = threshold if threshold > 0 else float("inf")
    close(got, _apg_formula(plain["cond"], plain["uncond"], CFG, eta, r), 1e-4)
    if eta == 1.0 and threshold == 0.0:
        # No projection, no clipping: the paper's plain CFG at w = cfg + 1.
        close(got, plain["uncond"] + (CFG + 1) * (plain["cond"] - plain["uncond"]), 1e-4)
    assert "sampler_pre_cfg_function" not in model.model_options


def test_apg_momentum_averages_over_steps_and_restarts_with_the_schedule() -> None:
    """The guidance becomes the running sum m * avg + g; a rising sigma starts a new average."""
    g = torch.Generator().manual_seed(4)
    cond1, uncond1, cond2, uncond2 = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(4))
    apg = AdaptiveProjectedGuidance(eta=1.0, norm_threshold=0.0, momentum=0.5)

    def step(cond: torch.Tensor, uncond: torch.Tensor, sigma: float) -> torch.Tensor:
        args = {"conds_out": [cond, uncond], "sigma": torch.tensor([sigma]), "cond_scale": 1.0}
        new_cond, _ = apg(args)
        return new_cond - (cond - uncond) - uncond  # the guidance APG used (eta 1, scale 1)

    torch.testing.assert_close(step(cond1, uncond1, 5.0), cond1 - uncond1)
    torch.testing.assert_close(step(cond2, uncond2, 3.0), 0.5 * (cond1 - uncond1) + (cond2 - uncond2))
    torch.testing.assert_close(step(cond2, uncond2, 9.0), cond2 - uncond2)


def test_cfg_zero_star(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """CFG-Zero* (Fan et al. 2025, eq. 7): s* = <v_c, v_u> / ||v_u||^2 with v the noise
    predictions x - D; the guided prediction u s* + w (c - u s*) (on the x0 predictions, as
    the reference applies it)."""
    (m,) = gp.CFGZeroStar().patch(model)
    x, cond, uncond = plain["x"], plain["cond"], plain["uncond"]
    v_c, v_u = (x - cond).flatten(), (x - uncond).flatten()
    s = float(v_c @ v_u / (v_u @ v_u + 1e-8))
    close(guided(m, x, plain["sigma"]), uncond * s + CFG * (cond - uncond * s), 1e-4)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_cfg_norm_post(model: Any, plain: dict[str, torch.Tensor], strength: float) -> None:
    """The CFG result times min(1, |cond| / |cfg|) per pixel (norms over channels), times strength."""
    (m,) = gp.CFGNorm().patch(model, strength)
    cfg = plain["cfg"]
    ratio = (plain["cond"].pow(2).sum(1, keepdim=True).sqrt() / (cfg.pow(2).sum(1, keepdim=True).sqrt() + 1e-8))
    close(guided(m, plain["x"], plain["sigma"]), cfg * ratio.clamp(max=1.0) * strength, 1e-4)


def test_cfg_norm_pre(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """On noise predictions e = x - D: plain CFG e_cfg rescaled to |e_cond| per pixel, blended
    half-and-half with e_cfg at strength 0.5."""
    (m,) = gp.CFGNorm().patch(model, 0.5, True)
    x = plain["x"]
    e_c, e_u = x - plain["cond"], x - plain["uncond"]
    e_cfg = e_u + CFG * (e_c - e_u)
    rescaled = e_cfg * e_c.norm(dim=1, keepdim=True) / e_cfg.norm(dim=1, keepdim=True)
    close(guided(m, x, plain["sigma"]), x - (0.5 * rescaled + 0.5 * e_cfg), 1e-4)


def test_mahiro(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """Positive-biased guidance: leap = w c, merge = (leap + cfg) / 2; sim = mean over pixels of
    the channel cosine between sqrt-signed w u and merge; weight = 2 (sim + 1);
    D = (weight cfg + (4 - weight) leap) / 4."""
    (m,) = gp.Mahiro().patch(model)
    cond, uncond, cfg = plain["cond"], plain["uncond"], plain["cfg"]
    leap = CFG * cond
    merge = (leap + cfg) / 2

    def root(t: torch.Tensor) -> torch.Tensor:
        return t.sign() * t.abs().sqrt()

    a, b = root(CFG * uncond), root(merge)
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    weight = 2 * (float(cosine.mean()) + 1)
    close(guided(m, plain["x"], plain["sigma"]), (weight * cfg + (4 - weight) * leap) / 4, 1e-4)


def test_tcfg(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """TCFG (arXiv 2503.18137): the unconditional noise e_u projected on the first right singular
    vector v1 of A = [e_u; e_c] (here from the 2x2 Gram matrix A A^T: v1 = A^T u1 / sqrt(l1))."""
    (m,) = gp.TCFG().patch(model)
    x, cond, uncond = plain["x"], plain["cond"], plain["uncond"]
    e_c, e_u = (x - cond).flatten().double(), (x - uncond).flatten().double()
    a = torch.stack([e_u, e_c])
    values, vectors = torch.linalg.eigh(a @ a.T)
    v1 = a.T @ vectors[:, -1] / values[-1].sqrt()
    e_u_damped = ((e_u @ v1) * v1).reshape(x.shape).float()
    uncond_damped = x - e_u_damped
    close(guided(m, x, plain["sigma"]), uncond_damped + CFG * (cond - uncond_damped), 1e-4)


def _box_filter(t: torch.Tensor, inner: float, outer: float, half_h: int, half_w: int) -> torch.Tensor:
    """The 2-D DFT of ``t`` with the frequencies f_y in [-half_h, half_h), f_x in [-half_w,
    half_w) (signed, unshifted) scaled by ``inner`` and the rest by ``outer``."""
    h, w = t.shape[-2:]
    fy = torch.fft.fftfreq(h) * h
    fx = torch.fft.fftfreq(w) * w
    low = ((fy >= -half_h) & (fy < half_h))[:, None] & ((fx >= -half_w) & (fx < half_w))[None, :]
    mask = torch.where(low, torch.tensor(inner), torch.tensor(outer))
    return torch.fft.ifft2(torch.fft.fft2(t.double()) * mask).real.float()


@pytest.mark.parametrize(("cutoff", "size"), [(2, 8), (20, 8), (1, 9)])
def test_fresca(model: Any, cutoff: int, size: int) -> None:
    """FreSca (arXiv 2504.02154): the guidance cond - uncond with its frequencies |f| < cutoff
    (clamped to the half size) scaled by scale_low and the rest by scale_high."""
    x, sigma = _latent(1, size)
    cond, uncond = predictions(model, x, sigma, POS, NEG)
    (m,) = gp.FreSca().patch(model, 0.8, 1.5, cutoff)
    half_h, half_w = min(cutoff, size // 2), min(cutoff, size // 2)
    filtered = _box_filter(cond - uncond, 0.8, 1.5, half_h, half_w)
    close(guided(m, x, sigma), uncond + CFG * filtered, 1e-4)


def test_epsilon_scaling(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """Epsilon scaling (arXiv 2308.15321): the guided noise divided by the factor."""
    (m,) = gp.EpsilonScaling().patch(model, 1.05)
    x = plain["x"]
    close(guided(m, x, plain["sigma"]), x - (x - plain["cfg"]) / 1.05, 1e-4)


@pytest.mark.parametrize(("k", "tsr_sigma"), [(0.95, 1.0), (1.2, 3.0), (1.0, 1.0)])
def test_temporal_score_rescaling(model: Any, plain: dict[str, torch.Tensor], k: float, tsr_sigma: float) -> None:
    """TSR (arXiv 2510.01184, eq. 6): for an eps model SNR = 1 / sigma^2 and alpha = 1, so
    D' = x - r (x - D) with r = (snr s^2 + 1) / (snr s^2 / k + 1)."""
    (m,) = gp.TemporalScoreRescaling().patch(model, k, tsr_sigma)
    snr = 1 / SIGMA**2
    r = (snr * tsr_sigma**2 + 1) / (snr * tsr_sigma**2 / k + 1)
    x = plain["x"]
    close(guided(m, x, plain["sigma"]), x - r * (x - plain["cfg"]), 1e-4)


# --- Perp-Neg --------------------------------------------------------------------------------


def _perp_neg_formula(pos: torch.Tensor, neg: torch.Tensor, empty: torch.Tensor, w: float, neg_scale: float) -> torch.Tensor:
    """Perp-Neg (arXiv 2304.04968, eq. 9): e + w (p - neg_scale * n_perp), p = pos - e,
    n = neg - e, n_perp = n - <n, p> / |p|^2 p."""
    p, n = pos - empty, neg - empty
    n_perp = n - (n * p).sum() / (p * p).sum() * p
    return empty + w * (p - neg_scale * n_perp)


def test_perp_neg_node_and_guider(model: Any, plain: dict[str, torch.Tensor]) -> None:
    x, sigma = plain["x"], plain["sigma"]
    cond, uncond, empty = predictions(model, x, sigma, POS, NEG, EMPTY)
    expected = _perp_neg_formula(cond, uncond, empty, CFG, 0.7)
    (m,) = gp.PerpNeg().patch(model, EMPTY, 0.7)
    close(guided(m, x, sigma), expected, 1e-4)
    (guider,) = gp.PerpNegGuider().get_guider(model, POS, NEG, EMPTY, CFG, 0.7)
    guider.prepare(x)
    close(guider(x, sigma), expected, 1e-4)
    assert guider.original_conds["empty_negative_prompt"][0]["prompt_type"] == "negative"


def test_perp_neg_guider_skips_the_negative_at_zero_scale(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """neg_scale 0: the negative is not evaluated and the result is empty + w (pos - empty)."""
    x, sigma = plain["x"], plain["sigma"]
    cond, empty = predictions(model, x, sigma, POS, EMPTY)
    (guider,) = gp.PerpNegGuider().get_guider(model, POS, NEG, EMPTY, CFG, 0.0)
    guider.prepare(x)
    close(guider(x, sigma), empty + CFG * (cond - empty), 1e-4)


# --- PAG and SAG: the perturbed pass recomputed with an object patch ---------------------------

MIDDLE_ATTN1 = "diffusion_model.middle_block.1.transformer_blocks.0.attn1"


class _IdentityAttention(torch.nn.Module):
    """Self-attention whose attention matrix is the identity: to_out(to_v(x))."""

    def __init__(self, attn: Any) -> None:
        super().__init__()
        self.inner = attn

    def forward(self, x: torch.Tensor, context: Any = None, value: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.inner.to_out(self.inner.to_v(x if value is None else value))


class _RecordingAttention(torch.nn.Module):
    """Self-attention written out (softmax(q k^T / sqrt(d)) v per head), keeping the scores."""

    def __init__(self, attn: Any) -> None:
        super().__init__()
        self.inner = attn
        self.scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: Any = None, value: Any = None, **kwargs: Any) -> torch.Tensor:
        a = self.inner
        heads = a.heads
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, heads, -1).transpose(1, 2)

        q, k, v = split(a.to_q(x)), split(a.to_k(x)), split(a.to_v(x))
        scores = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        self.scores = scores
        return a.to_out((scores @ v).transpose(1, 2).reshape(b, n, -1))


def test_pag(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """PAG (arXiv 2403.17377, eq. 8 added to CFG): cfg + s (cond - cond_perturbed), the
    perturbed pass with the middle block's self-attention map replaced by the identity."""
    (m,) = gp.PerturbedAttentionGuidance().patch(model, 2.0)
    x, sigma = plain["x"], plain["sigma"]
    perturbed = model.clone()
    perturbed.add_object_patch(MIDDLE_ATTN1, _IdentityAttention(model.get_model_object(MIDDLE_ATTN1)))
    (pag,) = predictions(perturbed, x, sigma, POS)
    close(guided(m, x, sigma), plain["cfg"] + 2.0 * (plain["cond"] - pag), 1e-4)
    (zero,) = gp.PerturbedAttentionGuidance().patch(model, 0.0)
    close(guided(zero, x, sigma), plain["cfg"])


@pytest.mark.parametrize("size", [8, 16])
def test_sag(model: Any, size: int) -> None:
    """SAG (arXiv 2210.00939, eq. 13 after CFG): the unconditional x0 blurred (9x9 Gaussian,
    reflect padding) where the middle block's self-attention mass (head mean, summed over the
    queries) exceeds 1, re-noised (+ x - uncond), predicted again unconditionally;
    D = cfg + s (degraded - sag)."""
    import torchvision.transforms.functional as TF

    x, sigma = _latent(2, size)
    recorder = _RecordingAttention(model.get_model_object(MIDDLE_ATTN1))
    recording = model.clone()
    recording.add_object_patch(MIDDLE_ATTN1, recorder)
    (uncond,) = predictions(recording, x, sigma, NEG)
    assert recorder.scores is not None
    cond, _ = predictions(model, x, sigma, POS, NEG)
    grid = size // 2  # the tiny UNet's middle block works at half the latent size
    mass = recorder.scores.mean(1).sum(1).reshape(1, 1, grid, grid)
    mask = F.interpolate((mass > 1.0).float(), size=(size, size), mode="nearest")
    blurred = TF.gaussian_blur(uncond, kernel_size=[9, 9], sigma=[1.5, 1.5])
    degraded = blurred * mask + uncond * (1 - mask)
    (sag,) = predictions(model, degraded + x - uncond, sigma, NEG)
    expected = uncond + CFG * (cond - uncond) + 0.75 * (degraded - sag)
    (m,) = gp.SelfAttentionGuidance().patch(model, 0.75, 1.5)
    close(guided(m, x, sigma), expected, 1e-4)
    assert 0 < float(mask.mean()) < 1 or size == 8  # a real mask (not all or nothing) on 16x16


def test_sag_blur_is_a_gaussian_blur() -> None:
    import torchvision.transforms.functional as TF

    img = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gaussian_blur(img, 9, 2.0), TF.gaussian_blur(img, [9, 9], [2.0, 2.0]))


def test_sag_keeps_the_unconditional_pass_at_cfg_1(model: Any, plain: dict[str, torch.Tensor]) -> None:
    (m,) = gp.SelfAttentionGuidance().patch(model, 0.5, 2.0)
    assert m.model_options["disable_cfg1_optimization"] is True
    got = guided(m, plain["x"], plain["sigma"], cfg=1.0)
    assert torch.isfinite(got).all() and not torch.allclose(got, plain["cond"], atol=1e-4)


# --- NAG -------------------------------------------------------------------------------------


def _nag_formula(z_pos: torch.Tensor, z_neg: torch.Tensor, s: float, alpha: float, tau: float) -> torch.Tensor:
    """NAG (arXiv 2505.21179, eqs. 5-7): g = s z+ - (s - 1) z-; g scaled by min(ratio, tau) /
    ratio with ratio = |g|_1 / |z+|_1 per token; alpha g + (1 - alpha) z+."""
    g = s * z_pos - (s - 1) * z_neg
    ratio = g.abs().sum(-1, keepdim=True) / z_pos.abs().sum(-1, keepdim=True)
    return alpha * g * ratio.clamp(max=tau) / ratio + (1 - alpha) * z_pos


def test_nag_output_patch_guides_the_conditional_chunk_only() -> None:
    g = torch.Generator().manual_seed(6)
    out = torch.randn(4, 16, 32, generator=g)  # [uncond x2 | cond x2]
    patch = nag_output_patch(5.0, 0.5, 1.5)
    got = patch(out, {"cond_or_uncond": [1, 0]})
    torch.testing.assert_close(got[:2], out[:2])
    torch.testing.assert_close(got[2:], _nag_formula(out[2:], out[:2], 5.0, 0.5, 1.5))
    # A call without both halves is left alone.
    assert patch(out, {"cond_or_uncond": [0, 0]}) is out


def test_nag_in_the_unet_layer(model: Any) -> None:
    """One self-attention layer of the tiny UNet on a [uncond; cond] batch, patched vs written out."""
    block = model.get_model_object("diffusion_model.input_blocks.1.1.transformer_blocks.0")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 64, block.attn1.to_q.in_features, generator=g)
    context = torch.randn(2, 77, WIDTH, generator=g)
    options = {"cond_or_uncond": [1, 0], "patches": {"attn1_output_patch": [nag_output_patch(4.0, 0.7, 2.0)]}}
    got = block(x, context, options)
    z = block.attn1(block.norm1(x))
    z = torch.cat([z[:1], _nag_formula(z[1:], z[:1], 4.0, 0.7, 2.0)])
    h = x + z
    h = h + block.attn2(block.norm2(h), context)
    close(got, h + block.ff(block.norm3(h)))


def test_nag_node(model: Any, plain: dict[str, torch.Tensor]) -> None:
    (m,) = gp.NAGuidance().patch(model, 5.0, 0.5, 2.5)
    assert m.model_options["disable_cfg1_optimization"] is True
    x, sigma = plain["x"], plain["sigma"]
    # Scale 1 guides nothing (g = z+): plain CFG.
    (neutral,) = gp.NAGuidance().patch(model, 1.0, 0.5, 2.5)
    close(guided(neutral, x, sigma), plain["cfg"])
    # At cfg 1 the unconditional pass still runs and steers the conditional one.
    got = guided(m, x, sigma, cfg=1.0)
    assert torch.isfinite(got).all() and not torch.allclose(got, plain["cond"], atol=1e-3)


# --- skip-layer guidance ---------------------------------------------------------------------


def _capturing(model: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A clone whose model calls record their transformer_options (a model function wrapper)."""
    seen: list[dict[str, Any]] = []

    def wrapper(apply: Any, args: dict[str, Any]) -> torch.Tensor:
        seen.append(args["c"]["transformer_options"])
        return apply(args["input"], args["timestep"], **args["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


def test_skip_layer_guidance(model: Any, plain: dict[str, torch.Tensor]) -> None:
    """cfg + s (cond - cond_skipped), rescaled by r std(cond) / std(result) + 1 - r; a UNet has
    no DiT blocks, so the skipping pass predicts the conditional again and only the rescale acts."""
    base, seen = _capturing(model)
    (m,) = gp.SkipLayerGuidanceDiT().skip_guidance(base, 3.0, 0.0, 1.0, "7, 8", "9", 0.5)
    x, sigma = plain["x"], plain["sigma"]
    cfg = plain["cfg"]
    factor = 0.5 * float(plain["cond"].std() / cfg.std()) + 0.5
    close(guided(m, x, sigma), cfg * factor, 1e-4)
    replaced = seen[-1].get("patches_replace", {}).get("dit", {})
    assert set(replaced) == {("double_block", 7), ("double_block", 8), ("single_block", 9)}
    # Outside its sigma range (1% .. 15% of the schedule lies above sigma 3) nothing happens.
    (late,) = gp.SkipLayerGuidanceDiT().skip_guidance(model, 3.0, 0.01, 0.15, "7", "7", 0.5)
    close(guided(late, x, sigma), cfg)
    (none,) = gp.SkipLayerGuidanceDiT().skip_guidance(model, 3.0, 0.0, 1.0, "", "none", 0.5)
    assert none is model


def test_skip_layer_guidance_simple_skips_in_the_unconditional_pass(model: Any, plain: dict[str, torch.Tensor]) -> None:
    base, seen = _capturing(model)
    (m,) = gp.SkipLayerGuidanceDiTSimple().skip_guidance(base, 0.0, 1.0, "3", "")
    close(guided(m, plain["x"], plain["sigma"]), plain["cfg"], 1e-4)
    calls = [(tuple(o["cond_or_uncond"]), set(o.get("patches_replace", {}).get("dit", {}))) for o in seen]
    assert calls == [((0,), set()), ((1,), {("double_block", 3)})]


# --- interface details packs rely on ---------------------------------------------------------


def test_nodes_return_clones_and_leave_the_input_alone(model: Any) -> None:
    before = dict(model.model_options)
    outs = [
        gp.APG().patch(model, 1.0, 5.0, 0.0)[0],
        gp.CFGZeroStar.execute(model)[0],
        gp.Mahiro().patch(model)[0],
        gp.TCFG().patch(model)[0],
        gp.FreSca().patch(model, 1.0, 1.25, 20)[0],
        gp.EpsilonScaling().patch(model, 1.005)[0],
        gp.TemporalScoreRescaling().patch(model, 0.95, 1.0)[0],
        gp.SelfAttentionGuidance().patch(model, 0.5, 2.0)[0],
        gp.NAGuidance().patch(model, 5.0, 0.5, 1.5)[0],
    ]
    assert all(o is not model for o in outs)
    assert model.model_options == before
    sag = outs[7].model_options["transformer_options"]["patches_replace"]["attn1"]
    assert list(sag) == [("middle", 0, 0)]


# --- through the server --------------------------------------------------------------------


async def test_chained_guidance_patches_through_the_server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    """CFGZeroStar -> PerturbedAttentionGuidance through KSampler, and a PerpNegGuider through
    SamplerCustomAdvanced: both run, differ from the plain run and are finite."""

    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"])
    sampler = {"seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints["sd1"].name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["ckpt", 1]}},
        "empty_text": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "zero": {"class_type": "CFGZeroStar", "inputs": {"model": ["ckpt", 0]}},
        "pag": {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["zero", 0], "scale": 3.0}},
        "k_plain": {"class_type": "KSampler", "inputs": {**sampler, "model": ["ckpt", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "latent_image": ["latent", 0]}},
        "k_chain": {"class_type": "KSampler", "inputs": {**sampler, "model": ["pag", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "latent_image": ["latent", 0]}},
        "guider": {"class_type": "PerpNegGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                             "negative": ["neg", 0], "empty_conditioning": ["empty_text", 0],
                                                             "cfg": 5.0, "neg_scale": 1.0}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}},
        "k_perpneg": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0],
                                                                        "sampler": ["select", 0], "sigmas": ["sigmas", 0],
                                                                        "latent_image": ["latent", 0]}},
    }
    for name in ("plain", "chain", "perpneg"):
        prompt[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": f"g/{name}"}}
    latents = saved_latents(server, await run_ok(server, prompt))
    assert set(latents) == {"plain", "chain", "perpneg"}
    for name in ("chain", "perpneg"):
        assert torch.isfinite(latents[name]).all()
        assert not torch.allclose(latents[name], latents["plain"], atol=1e-3), name


async def test_packs_reach_the_nodes_through_comfy_extras(comfy_server: Any, model: Any) -> None:
    """Packs import these classes from the reference's modules and call ``patch`` / ``execute``."""
    import importlib

    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"])
    modules = {
        "nodes_apg": ["APG"],
        "nodes_cfg": ["CFGZeroStar", "CFGNorm"],
        "nodes_mahiro": ["Mahiro"],
        "nodes_tcfg": ["TCFG"],
        "nodes_fresca": ["FreSca"],
        "nodes_eps": ["Epsilon Scaling", "TemporalScoreRescaling"],
        "nodes_perpneg": ["PerpNeg", "PerpNegGuider"],
        "nodes_sag": ["SelfAttentionGuidance"],
        "nodes_pag": ["PerturbedAttentionGuidance"],
        "nodes_nag": ["NAGuidance"],
        "nodes_slg": ["SkipLayerGuidanceDiT", "SkipLayerGuidanceDiTSimple"],
        "nodes_freelunch": ["FreeU", "FreeU_V2"],
        "nodes_hypertile": ["HyperTile"],
        "nodes_tomesd": ["TomePatchModel"],
        "nodes_attention_multiply": [
            "UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply", "CLIPAttentionMultiply", "UNetTemporalAttentionMultiply",
        ],
    }  # fmt: skip
    for module, names in modules.items():
        mappings = importlib.import_module(f"comfy_extras.{module}").NODE_CLASS_MAPPINGS
        assert set(mappings) == set(names), module
    pag = importlib.import_module("comfy_extras.nodes_pag").PerturbedAttentionGuidance
    patched = pag().patch(model, 3.0)[0]
    assert len(patched.model_options["sampler_post_cfg_function"]) == 1
    freeu = importlib.import_module("comfy_extras.nodes_freelunch").FreeU_V2
    again = freeu.execute(patched, 1.3, 1.4, 0.9, 0.2)[0]
    assert len(again.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert len(again.model_options["sampler_post_cfg_function"]) == 1
