"""UNet patch nodes (FreeU / FreeU_V2, HyperTile, ToMe, attention multipliers) against direct
computations on tiny random-weight UNets.

FreeU is checked on a whole UNet forward written out here (skip filtered by a DFT with the
lowest frequencies scaled, backbone half scaled); HyperTile and ToMe on one transformer layer
whose self-attention is written out per tile / per merged token group; the multipliers
against a model built from weights scaled by hand. One prompt chains patches through the server.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.unet import UNetModel, build_unet
from plugins.core_nodes.models.weight_patches import calculate_weight
from plugins.core_nodes.nodes import unet_patches as up
from plugins.core_nodes.patches.freeu import freeu_patch
from plugins.core_nodes.patches.hypertile import HyperTile, random_divisor
from plugins.core_nodes.patches.tome import TokenMerging

from . import tiny_sd
from .freeu_reference import freeu_forward, low_frequencies_scaled
from .node_helpers import run_ok, saved_latents, start_with_models
from .test_workflows_e2e import checkpoints  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH = 64  # the tiny SD1 checkpoint's text width


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> Iterator[tuple[Any, Any]]:  # noqa: F811
    torch.set_num_threads(1)
    model, clip, _ = adapters.load_checkpoint(checkpoints["sd1"])
    yield model, clip


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- FreeU ---------------------------------------------------------------------------------------


def _freeu_unet() -> UNetModel:
    """Three levels, so the backbone passes through both FreeU widths (4x and 2x the base)."""
    config = replace(
        tiny_sd.UNET_CONFIGS["sd1"],
        channel_mult=(1, 2, 4),
        num_res_blocks=(1, 1, 1),
        transformer_depth=(1, 0, 0),
        transformer_depth_output=(0, 0, 0, 0, 1, 1),
    )
    torch.manual_seed(8)
    return UNetModel(config).eval()


@pytest.mark.parametrize("v2", [False, True])
def test_freeu_in_the_unet(v2: bool) -> None:
    unet = _freeu_unet()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, tiny_sd.CONTEXT["sd1"], generator=g)
    t = torch.tensor([500.0, 20.0])
    factors = (1.3, 1.4, 0.9, 0.2)
    options = {"patches": {"output_block_patch": [freeu_patch(32, *factors, v2=v2)]}}
    got = unet(x, t, ctx, transformer_options=options)
    close(got, freeu_forward(unet, x, t, ctx, *factors, v2=v2), 1e-4)
    assert not torch.allclose(got, unet(x, t, ctx), atol=1e-3)


def test_freeu_nodes_read_the_models_width(loaded: tuple[Any, Any]) -> None:
    """The tiny SD1 model's base width is 32: 128-channel features take (b1, s1), 64 (b2, s2)."""
    model, _ = loaded
    for cls, v2 in ((up.FreeU, False), (up.FreeU_V2, True)):
        (m,) = cls().patch(model, 1.5, 2.0, 0.5, 0.25)
        (patch,) = m.model_options["transformer_options"]["patches"]["output_block_patch"]
        assert "patches" not in model.model_options["transformer_options"]
        g = torch.Generator().manual_seed(10)
        for width, b, s in ((128, 1.5, 0.5), (64, 2.0, 0.25)):
            h, hsp = torch.randn(1, width, 4, 4, generator=g), torch.randn(1, width, 4, 4, generator=g)
            new_h, new_hsp = patch(h, hsp, {})
            close(new_hsp, low_frequencies_scaled(hsp, s))
            if not v2:
                close(new_h, torch.cat([h[:, : width // 2] * b, h[:, width // 2 :]], 1))
        h = torch.randn(1, 96, 4, 4, generator=g)
        assert patch(h, h, {})[0] is h  # other widths are left alone
    assert up.FreeU.execute(model, 1.1, 1.2, 0.9, 0.2)[0] is not model


# --- HyperTile ---------------------------------------------------------------------------------


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head for [N, heads*d] x [M, heads*d]."""
    n, m = q.shape[0], k.shape[0]
    qh, kh, vh = (t.reshape(t.shape[0], heads, -1).transpose(0, 1) for t in (q, k, v))
    out = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(qh.shape[-1]), dim=-1) @ vh
    assert out.shape[1] == n and kh.shape[1] == m
    return out.transpose(0, 1).reshape(n, -1)


def _rest_of_block(block: Any, x: torch.Tensor, attn1_out: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    h = x + block.attn1.to_out(attn1_out)
    h = h + block.attn2(block.norm2(h), context)
    return h + block.ff(block.norm3(h))


@pytest.fixture(scope="module")
def block(loaded: tuple[Any, Any]) -> Any:
    """The tiny SD1 UNet's first self/cross-attention layer (8 heads of width 4)."""
    return loaded[0].get_model_object("diffusion_model.input_blocks.1.1.transformer_blocks.0")


@pytest.mark.parametrize(("shape", "tile", "grid"), [((16, 16), 64, (2, 2)), ((8, 16), 32, (4, 2))])
def test_hypertile_layer(block: Any, shape: tuple[int, int], tile: int, grid: tuple[int, int]) -> None:
    """Queries cut into nh x nw tiles of the token sequence read as (nh, h, nw, w), where h x w
    is the reference's grid (sqrt(N * W / H) x sqrt(N * H / W)); tile t = (i, j) attends to the
    t-th of nh * nw consecutive runs of the keys and values."""
    height, width = shape
    tokens = height * width
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1, tokens, 32, generator=g)
    context = torch.randn(1, 77, WIDTH, generator=g)
    tiler = HyperTile(tile, 1, 0, False)  # one option per axis: no random choice
    options = {"original_shape": [1, 4, height, width],
               "patches": {"attn1_patch": [tiler.split], "attn1_output_patch": [tiler.join]}}  # fmt: skip
    got = block(x, context, options)

    aspect = width / height
    gh, gw = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
    nh, nw = grid
    th, tw = gh // nh, gw // nw
    n = block.norm1(x)[0]
    q, k, v = block.attn1.to_q(n), block.attn1.to_k(n), block.attn1.to_v(n)
    run = tokens // (nh * nw)
    out = torch.empty_like(q)
    for i in range(nh):
        for j in range(nw):
            rows = [((i * th + a) * nw + j) * tw + b for a in range(th) for b in range(tw)]
            t = i * nw + j
            out[rows] = _heads_attention(q[rows], k[t * run : (t + 1) * run], v[t * run : (t + 1) * run], 8)
    close(got, _rest_of_block(block, x, out[None], context))
    assert tiler.pending is None


def test_hypertile_depth_and_randomness() -> None:
    tiler = HyperTile(64, 1, 0, False)
    q = torch.randn(1, 64, 32)  # half of a 16x16 latent's side: a lower layer
    assert tiler.split(q, q, q, {"original_shape": [1, 4, 16, 16]})[0] is q
    deeper = HyperTile(32, 1, 1, False)
    assert deeper.split(q, q, q, {"original_shape": [1, 4, 16, 16]})[0].shape == (4, 16, 32)
    # Tile counts are drawn among the swap_size smallest divisors >= the tile, never the last.
    torch.manual_seed(0)
    draws = {random_divisor(16, 4, 3) for _ in range(60)}
    assert draws == {4, 2}
    assert random_divisor(16, 4, 1) == 4 and random_divisor(6, 10, 2) == 1


# --- ToMe ----------------------------------------------------------------------------------------


def test_tome_layer(block: Any) -> None:
    """ToMe (Bolya & Hoffman 2023): destinations one random token per 2x2 cell; each other token
    matched to its most cosine-similar destination; the r = int(ratio * N) best-matched merged
    into it by mean; attention for the merged queries over all keys; every token gets its
    group's output."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(1, 64, 32, generator=g)
    context = torch.randn(1, 77, WIDTH, generator=g)
    tome = TokenMerging(0.3)
    options = {"original_shape": [1, 4, 8, 8],
               "patches": {"attn1_patch": [tome.merge_queries], "attn1_output_patch": [tome.unmerge_output]}}  # fmt: skip
    torch.manual_seed(14)
    chosen = torch.randint(4, size=(4, 4, 1))
    torch.manual_seed(14)
    got = block(x, context, options)

    n = block.norm1(x)[0]
    dst = sorted((2 * cy + int(c) // 2) * 8 + 2 * cx + int(c) % 2 for cy in range(4) for cx in range(4) for c in chosen[cy, cx])
    src = [i for i in range(64) if i not in dst]
    unit = n / n.norm(dim=-1, keepdim=True)
    sims = unit[src] @ unit[dst].T
    best, best_dst = sims.max(dim=-1)
    r = int(64 * 0.3)
    merged = {src[i]: dst[int(best_dst[i])] for i in best.argsort(descending=True)[:r].tolist()}
    group_of = {i: merged.get(i, i) for i in range(64)}
    leaders = sorted(set(group_of.values()))
    queries = torch.stack([n[[i for i in range(64) if group_of[i] == lead]].mean(0) for lead in leaders])
    k, v = block.attn1.to_k(n), block.attn1.to_v(n)
    leader_out = _heads_attention(block.attn1.to_q(queries), k, v, 8)
    out = torch.stack([leader_out[leaders.index(group_of[i])] for i in range(64)])
    close(got, _rest_of_block(block, x, out[None], context))
    assert len(leaders) == 64 - r


def test_tome_leaves_lower_layers_and_ratio_zero_alone(block: Any) -> None:
    g = torch.Generator().manual_seed(15)
    x = torch.randn(1, 16, 32, generator=g)  # a 4x4 layer of an 8x8 latent
    tome = TokenMerging(0.5)
    assert tome.merge_queries(x, x, x, {"original_shape": [1, 4, 8, 8]})[0] is x
    nothing = TokenMerging(0.0)
    x64 = torch.randn(1, 64, 32, generator=g)
    assert nothing.merge_queries(x64, x64, x64, {"original_shape": [1, 4, 8, 8]})[0] is x64


# --- attention multipliers -------------------------------------------------------------------


def _scaled_copy(model: Any, factors: dict[str, float]) -> Any:
    """A MODEL over a UNet built from the weights with each ``suffix`` multiplied by hand."""
    sd = {k: v.clone() for k, v in model.unet.state_dict().items()}
    for key in sd:
        for suffix, f in factors.items():
            if key.endswith(suffix + ".weight") or key.endswith(suffix + ".bias"):
                sd[key] = sd[key] * f
    return adapters.DiffusionModel(build_unet(sd), model.family)


def _denoise(model: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(16)
    x = torch.randn(1, 4, 8, 8, generator=g) * 2.0
    ctx = torch.randn(1, 77, WIDTH, generator=g)
    return model(x, torch.tensor([2.0]), {"c_crossattn": ctx})


@pytest.mark.parametrize(
    ("node", "layer"), [(up.UNetSelfAttentionMultiply, "attn1"), (up.UNetCrossAttentionMultiply, "attn2")]
)
def test_unet_attention_multiply(loaded: tuple[Any, Any], node: type, layer: str) -> None:
    model, _ = loaded
    (m,) = node().patch(model, 1.2, 0.7, 1.5, 0.8)
    expected = _scaled_copy(
        model, {f"{layer}.to_q": 1.2, f"{layer}.to_k": 0.7, f"{layer}.to_v": 1.5, f"{layer}.to_out.0": 0.8}
    )
    close(_denoise(m), _denoise(expected), 1e-4)
    assert not model.patches
    (neutral,) = node().patch(model, 1.0, 1.0, 1.0, 1.0)
    close(_denoise(neutral), _denoise(model))


def test_unet_temporal_attention_multiply(loaded: tuple[Any, Any]) -> None:
    """SD1 has no ``.time_stack.`` layers: the structural factors scale every output projection."""
    model, _ = loaded
    (m,) = up.UNetTemporalAttentionMultiply().patch(model, 0.6, 3.0, 1.3, 3.0)
    close(_denoise(m), _denoise(_scaled_copy(model, {"attn1.to_out.0": 0.6, "attn2.to_out.0": 1.3})), 1e-4)


def test_clip_attention_multiply(loaded: tuple[Any, Any]) -> None:
    _, clip = loaded
    (scaled,) = up.CLIPAttentionMultiply().patch(clip, 1.1, 0.9, 1.2, 0.5)
    factors = {"q_proj": 1.1, "k_proj": 0.9, "v_proj": 1.2, "out_proj": 0.5}
    sd = clip.patcher.model_state_dict()
    patched = scaled.patcher.patches
    expected_keys = {k for k in sd if any(f"self_attn.{p}." in k for p in factors)}
    assert set(patched) == expected_keys and expected_keys
    for key in expected_keys:
        f = next(v for p, v in factors.items() if f"self_attn.{p}." in key)
        close(calculate_weight(patched[key], sd[key].float().clone(), key), sd[key].float() * f)
    assert not clip.patcher.patches
    before, _ = clip.encode("a red kite")
    after, _ = scaled.encode("a red kite")
    assert not torch.allclose(before, after, atol=1e-4)
    (neutral,) = up.CLIPAttentionMultiply().patch(clip, 1.0, 1.0, 1.0, 1.0)
    close(neutral.encode("a red kite")[0], before)


# --- through the server --------------------------------------------------------------------


async def test_chained_unet_patches_through_the_server(
    comfy_server: Any, tmp_path: Path, checkpoints: dict[str, Path]  # noqa: F811
) -> None:
    """FreeU_V2 -> HyperTile -> TomePatchModel through KSampler changes the result; neutral
    settings of the same chain (HyperTile with one tile, ToMe ratio 0, FreeU at 1 / 1) and a
    neutral CLIPAttentionMultiply give the plain run."""

    server = await start_with_models(comfy_server, tmp_path, checkpoints=checkpoints["sd1"])
    sampler = {"seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}

    def chain(prefix: str, b: float, s: float, tile: int, ratio: float) -> dict[str, Any]:
        return {
            f"{prefix}_freeu": {"class_type": "FreeU_V2", "inputs": {"model": ["ckpt", 0], "b1": b, "b2": b, "s1": s, "s2": s}},
            f"{prefix}_tile": {"class_type": "HyperTile", "inputs": {"model": [f"{prefix}_freeu", 0], "tile_size": tile,
                                                                      "swap_size": 1, "max_depth": 0, "scale_depth": False}},
            f"{prefix}_tome": {"class_type": "TomePatchModel", "inputs": {"model": [f"{prefix}_tile", 0], "ratio": ratio}},
        }  # fmt: skip

    prompt: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints["sd1"].name}},
        "clip_x1": {"class_type": "CLIPAttentionMultiply", "inputs": {"clip": ["ckpt", 1], "q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a harbour at dawn", "clip": ["ckpt", 1]}},
        "pos_x1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a harbour at dawn", "clip": ["clip_x1", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        **chain("real", 1.3, 0.5, 64, 0.3),
        **chain("neutral", 1.0, 1.0, 2048, 0.0),
    }
    runs = {"plain": ("ckpt", "pos"), "real": ("real_tome", "pos"), "neutral": ("neutral_tome", "pos"), "clip": ("ckpt", "pos_x1")}
    for name, (model, positive) in runs.items():
        prompt[f"k_{name}"] = {"class_type": "KSampler", "inputs": {**sampler, "model": [model, 0], "positive": [positive, 0],
                                                                   "negative": ["neg", 0], "latent_image": ["latent", 0]}}  # fmt: skip
        prompt[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"k_{name}", 0], "filename_prefix": f"u/{name}"}}
    latents = saved_latents(server, await run_ok(server, prompt))
    assert set(latents) == set(runs)
    plain = latents["plain"]
    assert torch.isfinite(latents["real"]).all()
    assert not torch.allclose(latents["real"], plain, atol=1e-3)
    # Up to the float error of FreeU's FFT round trip (latents of the tiny model reach ~200).
    torch.testing.assert_close(latents["neutral"], plain, rtol=1e-4, atol=1e-3)
    close(latents["clip"], plain, 1e-5)
