"""Our UNet against diffusers' UNet2DConditionModel loaded with the same tiny random weights.

The single-file weights are converted for diffusers by its own ``convert_ldm_unet_checkpoint``
with explicit configs (offline). Tolerance in fp32: 1e-4 absolute on outputs of magnitude ~1
(observed differences are ~2e-6, i.e. summation-order noise).
"""

from __future__ import annotations

import os

import pytest
import torch

from plugins.core_nodes.models.unet import UNetModel, build_unet, config_from_state_dict, sdxl_adm

from . import tiny_sd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-4
FAMILIES = ["sd1", "sd2", "sdxl", "sdxl_refiner"]


def _reference(family: str, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = tiny_sd.diffusers_unet_config(family)
    ldm = {f"model.diffusion_model.{k}": v for k, v in weights.items()}
    converted = convert_ldm_unet_checkpoint(ldm, config)
    model = UNet2DConditionModel(**config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _inputs(family: str, batch: int = 2, size: tuple[int, int] = (16, 16)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    cfg = tiny_sd.UNET_CONFIGS[family]
    return {
        "x": torch.randn(batch, 4, *size, generator=g),
        "t": torch.tensor([3.0, 721.5][:batch]),
        "context": torch.randn(batch, 9, cfg.context_dim or 0, generator=g),
        "pooled": torch.randn(batch, tiny_sd.POOLED_SDXL, generator=g),
    }


def _size_ids(family: str, batch: int) -> tuple[list[float], dict[str, float]]:
    if family == "sdxl_refiner":
        return [1024.0, 768.0, 16.0, 8.0, 6.0], {"aesthetic_score": 6.0}
    return [1024.0, 768.0, 16.0, 8.0, 896.0, 640.0], {"target_height": 896.0, "target_width": 640.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_matches_diffusers(family: str) -> None:
    weights = tiny_sd.unet_weights(family)
    ours = build_unet(weights)
    ref = _reference(family, weights)
    i = _inputs(family)
    kwargs = {}
    y = None
    if tiny_sd.UNET_CONFIGS[family].adm_in_channels is not None:
        ids, extra = _size_ids(family, 2)
        y = sdxl_adm(i["pooled"], 1024.0, 768.0, 16.0, 8.0, **extra)
        kwargs["added_cond_kwargs"] = {"text_embeds": i["pooled"], "time_ids": torch.tensor([ids, ids])}
    with torch.no_grad():
        got = ours(i["x"], i["t"], i["context"], y)
        want = ref(i["x"], i["t"], encoder_hidden_states=i["context"], **kwargs).sample
    assert got.shape == want.shape == i["x"].shape
    assert want.abs().max() > 0.1  # the comparison means something
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_is_read_back_from_weights(family: str) -> None:
    assert config_from_state_dict(tiny_sd.unet_weights(family)) == tiny_sd.UNET_CONFIGS[family]


def test_odd_latent_sizes_keep_their_shape() -> None:
    model = build_unet(tiny_sd.unet_weights("sd1"))
    i = _inputs("sd1", batch=1, size=(13, 11))
    with torch.no_grad():
        out = model(i["x"], i["t"], i["context"])
    assert out.shape == (1, 4, 13, 11)


def test_sdxl_without_adm_vector_is_a_clear_error() -> None:
    model = build_unet(tiny_sd.unet_weights("sdxl"))
    i = _inputs("sdxl")
    with pytest.raises(ValueError, match="ADM"):
        model(i["x"], i["t"], i["context"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_follow_fp32(dtype: torch.dtype) -> None:
    weights = tiny_sd.unet_weights("sdxl")
    full = build_unet(weights)
    half = build_unet(weights, dtype=dtype)
    assert half.dtype == dtype
    i = _inputs("sdxl")
    y = sdxl_adm(i["pooled"], 512.0, 512.0)
    with torch.no_grad():
        want = full(i["x"], i["t"], i["context"], y)
        got = half(i["x"], i["t"], i["context"], y)
    assert got.dtype == torch.float32  # outputs come back in the caller's dtype
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.15


def test_build_refuses_weights_that_do_not_fit() -> None:
    weights = tiny_sd.unet_weights("sd1")
    weights.pop("out.0.weight")
    with pytest.raises(RuntimeError, match="out.0.weight"):
        build_unet(weights, tiny_sd.UNET_CONFIGS["sd1"])


def test_timestep_embedding_is_part_of_the_comparison() -> None:
    # Two timesteps must give different outputs, or the reference comparison would not cover it.
    model = UNetModel(tiny_sd.UNET_CONFIGS["sd1"]).eval()
    i = _inputs("sd1", batch=1)
    with torch.no_grad():
        a = model(i["x"], torch.tensor([1.0]), i["context"])
        b = model(i["x"], torch.tensor([900.0]), i["context"])
    assert (a - b).abs().max() > 1e-3
