"""SD3 / SD3.5: family detection from the weights (full-size layouts on meta tensors, tiny files)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.checkpoint import CheckpointError, detect_family, load_diffusion_model
from plugins.core_nodes.models.mmdit import MMDiT
from tests.plugins.core_nodes.tiny_sd3 import (
    SD3_MEDIUM,
    SD35_LARGE,
    SD35_MEDIUM,
    TINY_SD35_MEDIUM,
    meta_weights,
    mmdit_weights,
)


@pytest.mark.parametrize("config", [SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM], ids=["sd3_medium", "sd35_large", "sd35_medium"])
def test_full_size_layouts_are_sd3(config) -> None:
    family = detect_family(meta_weights(config), "big.safetensors")
    assert (family.name, family.prediction) == ("sd3", "flow")
    assert family.unet_config == config
    assert not family.unclip
    assert family.latent_scale == 1.5305


def test_sd35_variants_differ_where_the_reference_says() -> None:
    large = detect_family(meta_weights(SD35_LARGE), "large.safetensors").unet_config
    medium = detect_family(meta_weights(SD35_MEDIUM), "medium.safetensors").unet_config
    sd3 = detect_family(meta_weights(SD3_MEDIUM), "sd3.safetensors").unet_config
    assert (large.depth, large.num_heads, large.hidden_size) == (38, 38, 2432)
    assert (medium.depth, medium.num_heads, medium.hidden_size) == (24, 24, 1536)
    assert medium.x_block_self_attn_layers == tuple(range(13)) and not large.x_block_self_attn_layers
    assert (medium.pos_embed_max_size, large.pos_embed_max_size) == (384, 192)
    assert (sd3.qk_norm, large.qk_norm, medium.qk_norm) == (None, "rms", "rms")
    for config in (large, medium, sd3):
        assert (config.adm_in_channels, config.context_in_dim) == (2048, 4096)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_diffusion_model_file_loads_as_mmdit(tmp_path: Path, prefix: str) -> None:
    weights = mmdit_weights(TINY_SD35_MEDIUM)
    path = tmp_path / "sd35m.safetensors"
    save_file({prefix + k: v for k, v in weights.items()}, str(path))
    family, network = load_diffusion_model(path)
    assert family.name == "sd3" and family.unet_config == TINY_SD35_MEDIUM
    assert isinstance(network, MMDiT)
    loaded = network.state_dict()
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_half_precision_file_keeps_its_dtype_unless_asked(tmp_path: Path) -> None:
    weights = {k: v.to(torch.bfloat16) for k, v in mmdit_weights(TINY_SD35_MEDIUM).items()}
    path = tmp_path / "bf16.safetensors"
    save_file(weights, str(path))
    assert load_diffusion_model(path)[1].dtype == torch.bfloat16
    assert load_diffusion_model(path, dtype=torch.float32)[1].dtype == torch.float32


def test_mmdit_of_another_latent_width_is_refused() -> None:
    sd = meta_weights(replace(SD3_MEDIUM, in_channels=4, out_channels=4))
    with pytest.raises(CheckpointError, match="odd.safetensors is not an SD3 model"):
        detect_family(sd, "odd.safetensors")


def test_truncated_mmdit_file_is_a_clear_error(tmp_path: Path) -> None:
    weights = mmdit_weights(TINY_SD35_MEDIUM)
    del weights["final_layer.linear.weight"]
    path = tmp_path / "cut.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_diffusion_model(path)
