"""fp8 storage for SD3 / SD3.5, as for Flux: UNETLoader's ``weight_dtype`` fp8 choices and fp8
checkpoints keep the MMDiT's layer weights (and an fp8 T5-XXL's) in fp8, cast per layer at
compute time. Each must compute as the float32 model holding the fp8-rounded weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.mmdit import MMDiT, build_mmdit
from plugins.core_nodes.models.operations import CastLinear
from tests.plugins.core_nodes.tiny_sd3 import (
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    E2E,
    TINY_SD35_MEDIUM,
    hf_clip,
    hf_state_dict,
    hf_t5,
    mmdit_weights,
    sd3_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "the house in the water"  # inside the tiny T5's vocabulary


def _inputs(config, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 6, 4, generator=g)
    context = torch.randn(2, 5, config.context_in_dim, generator=g)
    y = torch.randn(2, config.adm_in_channels, generator=g)
    return x, torch.tensor([700.0, 250.0]), context, y


def _fp8(sd: dict[str, torch.Tensor], storage: torch.dtype) -> dict[str, torch.Tensor]:
    """Matrices, kernels and the position table in fp8, vectors as they are."""
    return {k: v.to(storage) if v.ndim >= 2 else v for k, v in sd.items()}


def _widened(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in sd.items()}


@pytest.mark.parametrize("choice,storage", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_unet_loader_weight_dtype_keeps_fp8_and_computes_as_the_rounded_weights(
    tmp_path: Path, choice: str, storage: torch.dtype
) -> None:
    sd = {k: v.to(torch.bfloat16) for k, v in mmdit_weights(TINY_SD35_MEDIUM, seed=3).items()}
    save_file(sd, str(tmp_path / "sd35m_bf16.safetensors"))
    model = adapters.load_unet(tmp_path / "sd35m_bf16.safetensors", choice)
    net = model.unet
    assert isinstance(net, MMDiT) and model.family.name == "sd3"
    block = net.joint_blocks[0]
    # Layer matrices (and the patch kernel) in fp8 behind casting layers; vectors and the position
    # table as stored; computed in float32 on the CPU.
    assert block.x_block.attn.qkv.weight.dtype == storage and isinstance(block.x_block.attn.qkv, CastLinear)
    assert block.x_block.attn2.qkv.weight.dtype == storage and net.x_embedder.proj.weight.dtype == storage
    assert net.final_layer.adaLN_modulation[1].weight.dtype == storage
    assert block.x_block.attn.qkv.bias.dtype != storage and net.pos_embed.dtype != storage
    assert net.dtype == torch.float32
    stored = sum(p.numel() * p.element_size() for p in net.parameters())
    assert stored < 0.6 * sum(v.numel() * v.element_size() for v in sd.values())

    # Equal to the float32 network holding the weights the fp8 layers hold.
    rounded = _widened({k: v.to(storage) if v.ndim >= 2 and k != "pos_embed" else v for k, v in sd.items()})
    x, t, ctx, y = _inputs(TINY_SD35_MEDIUM)
    with torch.no_grad():
        got = net(x, t, ctx, y)
        expected = build_mmdit(rounded, dtype=torch.float32)(x, t, ctx, y)
        unrounded = build_mmdit(_widened(sd), dtype=torch.float32)(x, t, ctx, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - unrounded).abs().max() > 1e-3  # the rounding really is there
    # The default choice on the same file keeps bf16 (widened to the CPU's float32 compute).
    default = adapters.load_unet(tmp_path / "sd35m_bf16.safetensors").unet
    assert default.joint_blocks[0].x_block.attn.qkv.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def fp8_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp8 SD3.5 checkpoint (MMDiT and T5 in fp8, CLIPs in float32), the same with the rounded
    weights in float32, and the fp8 / rounded T5 as standalone files beside both CLIPs."""
    root = tmp_path_factory.mktemp("sd3_fp8")
    clip_l, clip_g, t5 = hf_clip(CLIP_L_WIDTH, 1, large=True), hf_clip(CLIP_G_WIDTH, 2, large=False), hf_t5(3)
    whole = sd3_checkpoint(mmdit_weights(E2E, 4), clip_l, clip_g, t5)
    fp8 = {
        k: v.to(torch.float8_e4m3fn)
        if v.ndim >= 2 and k.startswith(("model.diffusion_model.", "text_encoders.t5xxl."))
        else v
        for k, v in whole.items()
    }
    for folder in ("checkpoints", "text_encoders"):
        (root / folder).mkdir()
    save_file(fp8, str(root / "checkpoints" / "sd35_fp8.safetensors"))
    save_file(_widened(fp8), str(root / "checkpoints" / "sd35_rounded.safetensors"))
    t5_fp8 = _fp8(hf_state_dict(t5), torch.float8_e4m3fn)
    save_file(t5_fp8, str(root / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors"))
    save_file(_widened(t5_fp8), str(root / "text_encoders" / "t5xxl_rounded.safetensors"))
    save_file(hf_state_dict(clip_l), str(root / "text_encoders" / "clip_l.safetensors"))
    save_file(hf_state_dict(clip_g), str(root / "text_encoders" / "clip_g.safetensors"))
    return root


def test_fp8_checkpoint_keeps_fp8_mmdit_and_t5(fp8_files: Path) -> None:
    model, clip, vae = adapters.load_checkpoint(fp8_files / "checkpoints" / "sd35_fp8.safetensors")
    ref_model, ref_clip, _ = adapters.load_checkpoint(fp8_files / "checkpoints" / "sd35_rounded.safetensors")
    assert model.family.name == "sd3" and vae is not None and clip is not None
    net = model.unet
    assert net.joint_blocks[0].context_block.attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert net.pos_embed.dtype == torch.float8_e4m3fn and net.dtype == torch.float32
    x, t, ctx, y = _inputs(E2E, seed=5)
    with torch.no_grad():
        got = net(x, t, ctx, y)
        expected = ref_model.unet(x, t, ctx, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    # The checkpoint's T5 stays fp8 (its norms follow the compute dtype); the CLIPs are widened.
    t5 = clip.models["t5xxl"]
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert t5.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in clip.models["l"].parameters())
    cond, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    ref_cond, ref_pooled = ref_clip.encode_from_tokens(ref_clip.tokenize(PROMPT), return_pooled=True)
    assert cond.shape == (1, 77 + 77, 4096)
    torch.testing.assert_close(cond, ref_cond, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)


def test_triple_clip_loader_keeps_an_fp8_t5(fp8_files: Path) -> None:
    folder = fp8_files / "text_encoders"
    clips = [folder / "clip_g.safetensors", folder / "clip_l.safetensors"]
    kept = adapters.load_clip([folder / "t5xxl_fp8_e4m3fn.safetensors", *clips], "sd3")
    widened = adapters.load_clip([folder / "t5xxl_rounded.safetensors", *clips], "sd3")
    q = kept.models["t5xxl"].encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == torch.float8_e4m3fn and isinstance(q, CastLinear)
    got = kept.encode_from_tokens(kept.tokenize(PROMPT), return_pooled=True)
    expected = widened.encode_from_tokens(widened.tokenize(PROMPT), return_pooled=True)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    assert got[0][:, 77:].abs().mean() > 0  # T5's tokens are really there
