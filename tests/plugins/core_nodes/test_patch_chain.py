"""Five patches chained in one workflow, through the real server, against the sampling loop
written out by hand.

The prompt: CheckpointLoaderSimple (tiny random-weight SD1) -> ModelSamplingDiscrete
(v_prediction) -> RescaleCFG -> FreeU_V2 -> PerturbedAttentionGuidance, and a LoRA hook
(CreateHookLora) scheduled by CreateHookKeyframesInterpolated / SetHookKeyframes on the positive
prompt (ConditioningSetProperties); KSampler euler / simple; SaveLatent. A second KSampler then
runs the same patched MODEL without the hook (after the first, through LatentMultiply x 0), so
the hook's weights must be gone from the cached model.

The expectation is computed here without the patch functions under test: the sigma table, the
scheduler, the keyframe rule, the LoRA merge, the UNet's block loop with FreeU_V2's backbone and
skip scaling, PAG's identity self-attention, the v-prediction denoiser, CFG, RescaleCFG, PAG's
term and the euler step are each written out, over raw UNet modules built from the checkpoint's
tensors (the hooked passes from tensors merged by hand at the keyframe's strength).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.unet import UNetModel, build_unet

from . import tiny_pipeline
from .freeu_reference import freeu_forward
from .node_helpers import run_ok, saved_latents, start_with_models
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED, STEPS, CFG = 7, 4, 5.0
RESCALE = 0.7  # RescaleCFG's multiplier
PAG_SCALE = 2.0
# FreeU_V2. The tiny UNet's backbone reaches 2x its base width (64), never 4x, so b2 / s2 act.
B1, B2, S1, S2 = 1.3, 1.4, 0.9, 0.5
LORA_STRENGTH = 0.8
# CreateHookKeyframesInterpolated: strength 1 -> 0 (linear) over keyframes at 0, 0.3, 0.6, 0.9.
KF_START, KF_END, KF_PERCENT_END, KF_COUNT = 1.0, 0.0, 0.9, 4
LATENT_SCALE = 0.18215  # SD1's latent format
POSITIVE, NEGATIVE = "a lighthouse on a cliff", "fog"

# A kohya LoRA (the checkpoint's own module names) on three layers of the UNet: the middle block's
# self-attention value projection (the one PAG's identity attention keeps), a decoder conv fed by
# FreeU's scaled backbone and filtered skip, and an encoder cross-attention key.
RANK, ALPHA = 2, 1.0
LORA_LAYERS = {
    "middle_block.1.transformer_blocks.0.attn1.to_v": (64, 64),
    "output_blocks.1.0.in_layers.2": (64, 128, 3, 3),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k": (32, tiny_pipeline.CLIP_WIDTH),
}


def _lora() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    sd: dict[str, torch.Tensor] = {}
    for module, shape in LORA_LAYERS.items():
        name = "lora_unet_" + module.replace(".", "_")
        out_ch, in_ch, *kernel = shape
        sd[f"{name}.lora_down.weight"] = torch.randn(RANK, in_ch, *kernel, generator=g) * 0.2
        sd[f"{name}.lora_up.weight"] = torch.randn(out_ch, RANK, *([1] * len(kernel)), generator=g) * 0.2
        sd[f"{name}.alpha"] = torch.tensor(ALPHA)
    return sd


def _lora_delta(lora: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    """The LoRA's change to one weight: (alpha / rank) * up @ down, conv kernels flattened."""
    name = "lora_unet_" + module.replace(".", "_")
    up, down = lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"]
    shape = LORA_LAYERS[module]
    return (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(shape)


# --- the schedule ---------------------------------------------------------------------------------


def _sigma_table() -> torch.Tensor:
    """SD's discrete schedule: betas on a squared linspace of sqrt(0.00085)..sqrt(0.012) over 1000
    steps (float64), alpha_bar their cumulative product of (1 - beta), sigma = sqrt((1 - a) / a),
    kept in float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    return (((1.0 - alpha_bar) / alpha_bar) ** 0.5).float()


def _sigma_at(table: torch.Tensor, t: float) -> float:
    """sigma at a fractional timestep: log-sigma interpolated between the neighbouring entries."""
    log = table.log()
    low, high = math.floor(t), math.ceil(t)
    w = t - low
    return float(((1 - w) * log[low] + w * log[high]).exp())


def _timestep(table: torch.Tensor, sigma: float) -> float:
    """The timestep the UNet sees: the index of the table entry nearest in log-sigma."""
    return float((torch.tensor(sigma).log() - table.log()).abs().argmin())


def _keyframe_strengths(table: torch.Tensor, sigmas: list[float]) -> list[float]:
    """The hook's keyframe per step. A keyframe at percent p starts at sigma(999 * (1 - p)) (p = 0:
    from the start) and takes over at the first step whose sigma is at or below that; the first
    keyframe guarantees itself one step, the interpolated ones none, so the last reached wins."""
    count = KF_COUNT
    percents = [KF_PERCENT_END * i / (count - 1) for i in range(count)]
    strengths = [KF_START + (KF_END - KF_START) * i / (count - 1) for i in range(count)]
    starts = [float("inf") if p <= 0 else _sigma_at(table, 999.0 * (1.0 - p)) for p in percents]
    out = []
    for step, s in enumerate(sigmas):
        current = strengths[0]
        if step > 0:  # the first keyframe's guaranteed step is over
            for start, strength in zip(starts, strengths, strict=True):
                if start >= s:
                    current = strength
        out.append(current)
    return out


# --- the UNet with FreeU_V2 and PAG written out -------------------------------------------------


class _IdentitySelfAttention(torch.nn.Module):
    """PAG's perturbation: the attention matrix is the identity, so each position keeps its own
    value: to_out(to_v(x))."""

    def __init__(self, attn: Any) -> None:
        super().__init__()
        self.inner = attn

    def forward(self, x: torch.Tensor, context: Any = None, value: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.inner.to_out(self.inner.to_v(x))


def _perturbed(unet: UNetModel) -> UNetModel:
    """A copy of ``unet`` whose middle-block self-attention is the identity."""
    out = copy.deepcopy(unet)
    block = out.middle_block[1].transformer_blocks[0]
    block.attn1 = _IdentitySelfAttention(block.attn1)
    return out


def _freeu_v2_unet(unet: UNetModel, x: torch.Tensor, t: float, ctx: torch.Tensor) -> torch.Tensor:
    """The UNet's block loop with the chain's FreeU_V2 (see :mod:`.freeu_reference`)."""
    return freeu_forward(unet, x, torch.tensor([t]), ctx, B1, B2, S1, S2, v2=True)


# --- the sampling loop --------------------------------------------------------------------------


def _expected(ckpt: Path, lora: dict[str, torch.Tensor], hook: bool) -> torch.Tensor:
    """The KSampler's output latent, the positive prompt with the scheduled LoRA hook or without."""
    sd = load_file(str(ckpt))
    prefix = "model.diffusion_model."
    weights = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    def unet_at(strength: float) -> UNetModel:
        merged = dict(weights)
        for module in LORA_LAYERS:
            key = f"{module}.weight"
            merged[key] = weights[key] + LORA_STRENGTH * strength * _lora_delta(lora, module)
        return build_unet(merged).float()

    _model, clip, _vae = adapters.load_checkpoint(ckpt)
    pos = clip.encode_from_tokens_scheduled(clip.tokenize(POSITIVE))[0][0]
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE))[0][0]

    table = _sigma_table()
    # The "simple" scheduler: every (1000 / steps)-th table entry from the top, then 0.
    sigmas = [float(table[-(1 + int(i * len(table) / STEPS))]) for i in range(STEPS)] + [0.0]
    strengths = _keyframe_strengths(table, sigmas[:-1])
    assert len(set(strengths)) >= 3, strengths  # the run really crosses keyframes
    plain = build_unet(weights).float()
    hooked = {s: unet_at(s) for s in set(strengths)}

    # KSampler's noise: torch.randn from a CPU generator seeded with the seed; the empty latent is
    # zeros (so SD1's latent scaling leaves it zero); at the top of the schedule the noise is
    # scaled by sqrt(1 + sigma^2).
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(SEED))
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5
    for step, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        t = _timestep(table, s)
        # v-prediction (sigma_data 1): input x / sqrt(s^2 + 1); denoised = x c_skip - v c_out.
        c_in, c_skip, c_out = (s**2 + 1) ** -0.5, 1 / (s**2 + 1), s * (s**2 + 1) ** -0.5
        lora_unet = hooked[strengths[step]] if hook else plain
        v_cond = _freeu_v2_unet(lora_unet, x * c_in, t, pos)
        v_uncond = _freeu_v2_unet(plain, x * c_in, t, neg)
        v_pag = _freeu_v2_unet(_perturbed(lora_unet), x * c_in, t, pos)
        # RescaleCFG (Lin et al. 2023, section 3.4) on the v predictions: CFG, then the result's
        # standard deviation pulled to the conditional one's, blended by the multiplier.
        v_cfg = v_uncond + CFG * (v_cond - v_uncond)
        v_rescaled = v_cfg * (v_cond.std() / v_cfg.std())
        v_final = RESCALE * v_rescaled + (1 - RESCALE) * v_cfg
        denoised = x * c_skip - v_final * c_out
        # PAG (Ahn et al. 2024): + scale * (cond - perturbed cond), on the denoised predictions.
        cond_denoised = x * c_skip - v_cond * c_out
        pag_denoised = x * c_skip - v_pag * c_out
        denoised = denoised + PAG_SCALE * (cond_denoised - pag_denoised)
        # Euler: x + (x - denoised) / s * (s_next - s).
        x = x + (x - denoised) / s * (s_next - s)
    return x / LATENT_SCALE


def _prompt(ckpt: str, lora: str) -> dict[str, Any]:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "vpred": {"class_type": "ModelSamplingDiscrete",
                  "inputs": {"model": ["ckpt", 0], "sampling": "v_prediction", "zsnr": False}},
        "rescale": {"class_type": "RescaleCFG", "inputs": {"model": ["vpred", 0], "multiplier": RESCALE}},
        "freeu": {"class_type": "FreeU_V2", "inputs": {"model": ["rescale", 0], "b1": B1, "b2": B2, "s1": S1, "s2": S2}},
        "pag": {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["freeu", 0], "scale": PAG_SCALE}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "hook": {"class_type": "CreateHookLora",
                 "inputs": {"lora_name": lora, "strength_model": LORA_STRENGTH, "strength_clip": 1.0}},
        "kf": {"class_type": "CreateHookKeyframesInterpolated", "inputs": {
            "strength_start": KF_START, "strength_end": KF_END, "interpolation": "linear", "start_percent": 0.0,
            "end_percent": KF_PERCENT_END, "keyframes_count": KF_COUNT, "print_keyframes": False}},
        "scheduled": {"class_type": "SetHookKeyframes", "inputs": {"hooks": ["hook", 0], "hook_kf": ["kf", 0]}},
        "pos_hooked": {"class_type": "ConditioningSetProperties", "inputs": {
            "cond_NEW": ["pos", 0], "strength": 1.0, "set_cond_area": "default", "hooks": ["scheduled", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["pag", 0], "positive": ["pos_hooked", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "chain/hooked"}},
        # The same patched MODEL again, without the hook, started from the first run's latent times
        # 0 (the empty latent, but only once the hooked run is done): the hook's weights must not
        # outlive its run in the cached model.
        "after": {"class_type": "LatentMultiply", "inputs": {"samples": ["sample", 0], "multiplier": 0.0}},
        "sample_plain": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["pag", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["after", 0]}},
        "save_plain": {"class_type": "SaveLatent", "inputs": {"samples": ["sample_plain", 0], "filename_prefix": "chain/plain"}},
    }  # fmt: skip


async def test_five_patches_chained_through_the_server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    lora = _lora()
    lora_path = tmp_path / "chain_lora.safetensors"
    save_file(lora, str(lora_path))
    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"], loras=lora_path)
    got = saved_latents(server, await run_ok(server, _prompt(checkpoints["sd1"].name, lora_path.name)), prefix="")
    assert set(got) == {"save", "save_plain"}

    for node, hook in (("save", True), ("save_plain", False)):
        want = _expected(checkpoints["sd1"], lora, hook)
        assert torch.isfinite(want).all()
        scale = float(want.abs().max())
        torch.testing.assert_close(got[node], want, rtol=1e-4, atol=1e-4 * scale)
    assert not torch.allclose(got["save"], got["save_plain"], atol=1e-2)
