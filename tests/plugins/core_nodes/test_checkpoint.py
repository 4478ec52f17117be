"""Single-file checkpoints: family detection on tiny models, split loading, clear errors."""

from __future__ import annotations

import collections
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.checkpoint import (
    CheckpointError,
    detect_family,
    load_checkpoint,
    load_diffusion_model,
    load_state_dict,
    load_vae,
)
from plugins.core_nodes.models.unet import UNetConfig, UNetModel

from . import tiny_sd

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_tiny_checkpoint_family_is_detected(tmp_path: Path, family: str) -> None:
    path = tiny_sd.write_checkpoint(tmp_path / f"{family}.safetensors", family)
    ckpt = load_checkpoint(path)
    assert ckpt.family.name == family
    assert ckpt.family.prediction == "eps"
    assert ckpt.family.unet_config == tiny_sd.UNET_CONFIGS[family]
    assert ckpt.vae is not None
    assert ckpt.text_encoder_weights.keys() == tiny_sd.text_encoder_stub(family).keys()
    want = tiny_sd.unet_weights(family)
    got = ckpt.unet.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_unet_alone_detects_sdxl_refiner_from_shapes(tmp_path: Path) -> None:
    # Without text-encoder keys only the ADM width tells the refiner from the base.
    path = tmp_path / "refiner_unet.safetensors"
    save_file(tiny_sd.unet_weights("sdxl_refiner"), str(path))
    family, unet = load_diffusion_model(path)
    assert family.name == "sdxl_refiner"
    assert family.latent_scale == 0.13025


def test_pickle_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": tiny_sd.checkpoint_dict("sd1"), "global_step": 10}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.family.name == "sd1"
    assert ckpt.family.latent_scale == 0.18215


def test_v_pred_marker_key_selects_v_prediction(tmp_path: Path) -> None:
    sd = tiny_sd.checkpoint_dict("sdxl")
    sd["v_pred"] = torch.tensor([])
    path = tmp_path / "vpred.safetensors"
    save_file(sd, str(path))
    assert load_checkpoint(path).family.prediction == "v"


def test_metadata_can_select_v_prediction(tmp_path: Path) -> None:
    path = tiny_sd.write_checkpoint(
        tmp_path / "sd2v.safetensors", "sd2", metadata={"modelspec.prediction_type": "v"}
    )
    ckpt = load_checkpoint(path)
    assert (ckpt.family.name, ckpt.family.prediction) == ("sd2", "v")
    assert ckpt.metadata["modelspec.prediction_type"] == "v"


@pytest.mark.parametrize("prefixed", [True, False])
def test_split_unet_file(tmp_path: Path, prefixed: bool) -> None:
    weights = tiny_sd.unet_weights("sd2")
    if prefixed:
        weights = {f"model.diffusion_model.{k}": v for k, v in weights.items()}
    path = tmp_path / "unet.safetensors"
    save_file(weights, str(path))
    family, unet = load_diffusion_model(path, dtype=torch.float16)
    assert family.name == "sd2"
    assert unet.dtype == torch.float16


@pytest.mark.parametrize("layout", ["prefixed", "bare", "diffusers"])
def test_split_vae_file(tmp_path: Path, layout: str) -> None:
    weights = tiny_sd.vae_weights()
    if layout == "prefixed":
        stored = {f"first_stage_model.{k}": v for k, v in weights.items()}
    elif layout == "bare":
        stored = weights
    else:
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        config = tiny_sd.diffusers_vae_config()
        ref = AutoencoderKL(**config)
        ref.load_state_dict(convert_ldm_vae_checkpoint(dict(weights), config), strict=True)
        stored = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "vae.safetensors"
    save_file(stored, str(path))
    vae = load_vae(path)
    got = vae.model.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def _write_bad(tmp_path: Path, kind: str) -> Path:
    if kind == "garbage.safetensors":
        (tmp_path / kind).write_bytes(b"\x00" * 64)
    elif kind == "truncated.safetensors":
        good = tiny_sd.write_checkpoint(tmp_path / "good.safetensors", "sd1").read_bytes()
        (tmp_path / kind).write_bytes(good[: len(good) // 2])
    elif kind == "garbage.ckpt":
        (tmp_path / kind).write_bytes(b"definitely not a pickle")
    elif kind == "empty.pt":
        (tmp_path / kind).write_bytes(b"")
    elif kind == "code.ckpt":
        torch.save({"state_dict": {"x": _Evil()}}, tmp_path / kind)
    elif kind == "unknown.safetensors":
        save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(tmp_path / kind))
    elif kind == "not_a_dict.pt":
        torch.save([torch.zeros(1)], tmp_path / kind)
    elif kind == "weights.onnx":
        (tmp_path / kind).write_bytes(b"x")
    elif kind == "broken_unet.safetensors":
        sd = tiny_sd.checkpoint_dict("sd1")
        sd.pop("model.diffusion_model.out.0.bias")
        save_file(sd, str(tmp_path / kind))
    elif kind == "adm_without_sdxl_shape.safetensors":
        sd = tiny_sd.checkpoint_dict("sd2")
        sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(128, 64)
        save_file(sd, str(tmp_path / kind))
    return tmp_path / kind


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage.safetensors", "not a valid safetensors file"),
        ("truncated.safetensors", "not a valid safetensors file"),
        ("garbage.ckpt", "not a valid checkpoint"),
        ("empty.pt", "not a valid checkpoint"),
        ("code.ckpt", "Refusing to load"),
        ("unknown.safetensors", "not a Stable Diffusion model this server knows"),
        ("not_a_dict.pt", "does not hold a dictionary"),
        ("weights.onnx", "Unsupported model file type"),
        ("broken_unet.safetensors", "do not fit"),
        ("adm_without_sdxl_shape.safetensors", "fits no SDXL layout"),
        ("missing.safetensors", "not found"),
    ],
)
def test_bad_checkpoint_gives_clear_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    path = _write_bad(tmp_path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert kind in str(info.value)
    assert message in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_vae_file_without_autoencoder_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notavae.safetensors"
    save_file(tiny_sd.unet_weights("sd1"), str(path))
    with pytest.raises(CheckpointError, match="notavae.safetensors"):
        load_vae(path)


def test_diffusers_unet_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "diffusers_unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="diffusers_unet.safetensors.*diffusers UNet layout"):
        load_diffusion_model(path)


def test_loading_checks_for_interrupts_between_tensors(tmp_path: Path) -> None:
    path = tiny_sd.write_checkpoint(tmp_path / "sd1.safetensors", "sd1")
    calls = collections.Counter()

    def check() -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_state_dict(path, check)
    assert calls["n"] == 5


def _real_size(name: str) -> UNetConfig:
    sd1 = tiny_sd.SD15_UNET
    linear = {"use_linear_in_transformer": True, "num_heads": None, "num_head_channels": 64}
    if name == "sd1":
        return sd1
    if name == "sd2":
        return replace(sd1, context_dim=1024, **linear)
    if name == "sdxl":
        return replace(
            sd1,
            channel_mult=(1, 2, 4),
            num_res_blocks=(2, 2, 2),
            transformer_depth=(0, 2, 10),
            transformer_depth_output=(0, 0, 0, 2, 2, 2, 10, 10, 10),
            transformer_depth_middle=10,
            context_dim=2048,
            adm_in_channels=2816,
            **linear,
        )
    return replace(
        sd1,
        model_channels=384,
        transformer_depth=(0, 4, 4, 0),
        transformer_depth_output=(0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0),
        transformer_depth_middle=4,
        context_dim=1280,
        adm_in_channels=2560,
        **linear,
    )


def _meta_weights(config: UNetConfig) -> dict[str, torch.Tensor]:
    # Shapes without storage: real-size layouts cost nothing to build.
    with torch.device("meta"):
        return dict(UNetModel(config).state_dict())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_real_size_layouts_are_detected(family: str) -> None:
    config = _real_size(family)
    detected = detect_family(_meta_weights(config), "real.safetensors")
    assert detected.name == family
    assert detected.unet_config == config


def test_real_size_heads_follow_each_family() -> None:
    assert _real_size("sd1").heads_for(1280) == (8, 160)
    assert _real_size("sd2").heads_for(320) == (5, 64)
    assert _real_size("sdxl").heads_for(1280) == (20, 64)


@pytest.mark.parametrize(("spread", "prediction"), [(0.2, "v"), (0.0, "eps")])
def test_sd2_768_v_is_told_by_its_norm_biases(spread: float, prediction: str) -> None:
    weights = _meta_weights(_real_size("sd2"))
    key = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    weights[key] = spread * torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
    assert detect_family(weights, "sd2.safetensors").prediction == prediction


def test_mixed_precision_file_loads_as_one_dtype(tmp_path: Path) -> None:
    sd = tiny_sd.checkpoint_dict("sd1")
    mixed = {k: (v.half() if v.ndim > 1 else v) for k, v in sd.items()}
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    ckpt = load_checkpoint(path)
    assert {p.dtype for p in ckpt.unet.parameters()} == {torch.float16}
    assert ckpt.vae is not None
    assert {p.dtype for p in ckpt.vae.model.parameters()} == {torch.float16}
    latent = ckpt.vae.encode(torch.rand(1, 16, 16, 3))
    assert latent.dtype == torch.float32 and torch.isfinite(latent).all()


def test_built_models_hold_their_weights_in_aligned_memory(tmp_path: Path) -> None:
    """Tensors packed back to back in a file sit off a 64-byte boundary; the built UNet and VAE
    hold every weight on one (with the file's values), so the same weights from two files run the
    same CPU kernels (a UNet extracted from a checkpoint once gave a picture one level off)."""
    sd = tiny_sd.checkpoint_dict("sd1")
    path = tmp_path / "sd1.safetensors"
    save_file(sd, str(path))
    raw, _ = load_state_dict(path)
    assert any(t.data_ptr() % 64 for t in raw.values()), "the file no longer tests misalignment"
    ckpt = load_checkpoint(path)
    assert ckpt.vae is not None
    unet_file = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}, str(unet_file))
    _, unet = load_diffusion_model(unet_file)
    for prefix, model in (("model.diffusion_model.", ckpt.unet), ("model.diffusion_model.", unet)):
        for name, tensor in model.state_dict().items():
            assert tensor.data_ptr() % 64 == 0, name
            assert torch.equal(tensor, sd[prefix + name])
    for name, tensor in ckpt.vae.model.state_dict().items():
        assert tensor.data_ptr() % 64 == 0, name
