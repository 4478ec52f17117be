"""The SD3 / SD3.5 MMDiT against diffusers' SD3Transformer2DModel holding the same weights
(converted from the reference layout by diffusers' own single-file code), and its sizes read
from the weights, full-size layouts included."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from plugins.core_nodes.models.mmdit import MMDiT, build_mmdit, config_from_state_dict, is_mmdit
from plugins.core_nodes.models.patcher import set_model_options_patch_replace
from tests.plugins.core_nodes.tiny_sd3 import (
    SD3_MEDIUM,
    SD35_LARGE,
    SD35_MEDIUM,
    TINY_SD3,
    TINY_SD35_LARGE,
    TINY_SD35_MEDIUM,
    diffusers_transformer,
    meta_weights,
    mmdit_weights,
)

TOL = 1e-4


def _inputs(config, height: int = 8, width: int = 12, batch: int = 2, tokens: int = 7, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    context = torch.randn(batch, tokens, config.context_in_dim, generator=g)
    pooled = torch.randn(batch, config.adm_in_channels, generator=g)
    timesteps = torch.tensor([937.5, 120.25])[:batch]
    return x, timesteps, context, pooled


def _reference(model, x, timesteps, context, pooled, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(
            hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=timesteps,
            return_dict=False, **kwargs,
        )[0]  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [TINY_SD35_MEDIUM, TINY_SD35_LARGE, TINY_SD3],
    ids=["sd35_medium_dual_attention", "sd35_large_qk_norm", "sd3_medium"],
)
def test_matches_diffusers(config) -> None:
    weights = mmdit_weights(config)
    ours = build_mmdit(weights)
    assert ours.config == config
    theirs = diffusers_transformer(config, weights)
    # 8x12 latent on an 8x8-patch table: the 4x6 centre crop is off-origin on both axes.
    x, t, context, pooled = _inputs(config)
    expected = _reference(theirs, x, t, context, pooled)
    got = ours(x, t, context, pooled)
    assert got.shape == x.shape
    assert expected.abs().mean() > 0.05
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)


def test_skipped_block_matches_diffusers_skip_layers() -> None:
    """A ``dit`` double_block replacement handing back its input skips the block (what skip-layer
    guidance does), as diffusers' ``skip_layers``."""
    config = TINY_SD35_MEDIUM
    weights = mmdit_weights(config, seed=3)
    ours = build_mmdit(weights)
    theirs = diffusers_transformer(config, weights)
    x, t, context, pooled = _inputs(config, height=6, width=6, batch=1)
    options = set_model_options_patch_replace({"transformer_options": {}}, lambda args, extra: args, "dit", "double_block", 1)
    got = ours(x, t, context, pooled, transformer_options=options["transformer_options"])
    expected = _reference(theirs, x, t, context, pooled, skip_layers=[1])
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    plain = ours(x, t, context, pooled)
    assert (plain - got).abs().max() > 1e-2


def test_replacement_sees_block_inputs_and_can_run_the_original() -> None:
    config = TINY_SD3
    ours = build_mmdit(mmdit_weights(config, seed=4))
    x, t, context, pooled = _inputs(config, batch=1)
    seen: list[tuple[int, ...]] = []

    def through(args, extra):
        seen.append(tuple(args["img"].shape))
        return extra["original_block"](args)

    options = set_model_options_patch_replace({"transformer_options": {}}, through, "dit", "double_block", 0)
    got = ours(x, t, context, pooled, transformer_options=options["transformer_options"])
    assert seen == [(1, 4 * 6, config.hidden_size)]
    torch.testing.assert_close(got, ours(x, t, context, pooled), rtol=0, atol=0)


def test_odd_latent_is_padded_and_cropped_back() -> None:
    config = TINY_SD3
    ours = build_mmdit(mmdit_weights(config, seed=6))
    x, t, context, pooled = _inputs(config, height=7, width=9, batch=1)
    out = ours(x, t, context, pooled)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_latent_larger_than_position_table_is_refused() -> None:
    config = TINY_SD3
    ours = build_mmdit(mmdit_weights(config, seed=6))
    x, t, context, pooled = _inputs(config, height=18, width=8, batch=1)
    with pytest.raises(ValueError, match="more than this model's 8x8 positions"):
        ours(x, t, context, pooled)


def test_half_precision_weights_compute_in_their_dtype() -> None:
    config = TINY_SD35_MEDIUM
    weights = mmdit_weights(config, seed=2)
    ours = build_mmdit({k: v.to(torch.bfloat16) for k, v in weights.items()})
    assert ours.dtype == torch.bfloat16
    x, t, context, pooled = _inputs(config, batch=1)
    out = ours(x, t, context, pooled)
    assert out.dtype == torch.float32
    full = build_mmdit(weights)(x, t, context, pooled)
    assert (out - full).abs().mean() < 0.05 * full.abs().mean()


def test_wrong_weights_are_an_error() -> None:
    weights = mmdit_weights(TINY_SD3)
    del weights["joint_blocks.1.x_block.mlp.fc2.bias"]
    with pytest.raises(RuntimeError, match="fc2.bias"):
        build_mmdit(weights)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SD3_MEDIUM, {"depth": 24, "hidden_size": 1536, "num_heads": 24, "pos_embed_max_size": 192,
                      "qk_norm": None, "x_block_self_attn_layers": ()}),
        (SD35_LARGE, {"depth": 38, "hidden_size": 2432, "num_heads": 38, "pos_embed_max_size": 192,
                      "qk_norm": "rms", "x_block_self_attn_layers": ()}),
        (SD35_MEDIUM, {"depth": 24, "hidden_size": 1536, "num_heads": 24, "pos_embed_max_size": 384,
                       "qk_norm": "rms", "x_block_self_attn_layers": tuple(range(13))}),
    ],
    ids=["sd3_medium", "sd35_large", "sd35_medium"],
)  # fmt: skip
def test_full_size_layouts_give_their_config(config, expected) -> None:
    sd = meta_weights(config)
    assert is_mmdit(sd)
    found = config_from_state_dict(sd)
    for name, value in expected.items():
        assert getattr(found, name) == value, name
    assert (found.adm_in_channels, found.context_in_dim, found.in_channels, found.out_channels) == (2048, 4096, 16, 16)
    assert found.mlp_hidden == 4 * found.hidden_size
    assert found == config


def test_layernorm_qk_norm_is_told_from_rms() -> None:
    sd = meta_weights(replace(TINY_SD3, qk_norm="ln"))
    assert config_from_state_dict(sd).qk_norm == "ln"
    assert config_from_state_dict(meta_weights(TINY_SD35_LARGE)).qk_norm == "rms"


def test_unet_weights_are_not_an_mmdit() -> None:
    assert not is_mmdit({"input_blocks.0.0.weight": torch.zeros(1)})
    assert isinstance(MMDiT(TINY_SD3), torch.nn.Module)
