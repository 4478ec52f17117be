"""LoRA against the merged-weights reference, in kohya, diffusers / PEFT and LyCORIS key formats.

Each test writes a LoRA file, applies it with ``adapters.apply_lora`` and compares the result with
a checkpoint whose weights the test merged by hand (``W + strength * alpha / rank * up @ down``),
loaded as a plain model. Tolerance (fp32): 1e-5 absolute + relative on denoiser outputs and text
conditioning, the rounding of merging in a different order. Reversibility is bit-exact: the base
model's outputs are unchanged after a LoRA was applied, and strength 0 returns the base objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.lora import LoraError, read_deltas, unet_diffusers_names

from . import tiny_pipeline, tiny_sd

TOL = {"atol": 1e-5, "rtol": 1e-5}
RANK = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("lora_bases")
    out = {}
    for family in ("sd1", "sdxl"):
        sd = tiny_pipeline.checkpoint_dict(family)
        path = root / f"{family}.safetensors"
        save_file(sd, str(path))
        out[family] = (path, sd)
    return out


def _pair(out_features: int, in_shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, *in_shape, generator=g) * 0.2
    up_shape = (out_features, RANK, 1, 1) if len(in_shape) == 3 else (out_features, RANK)
    return torch.randn(*up_shape, generator=g) * 0.2, down


def _merge(
    sd: dict[str, torch.Tensor], key: str, up: torch.Tensor, down: torch.Tensor, scale: float
) -> dict[str, torch.Tensor]:
    out = dict(sd)
    weight = sd[key]
    delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(weight.shape)
    out[key] = weight + scale * delta
    return out


def _probe(model: Any, clip: Any, family: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cond, pooled = clip.encode("a (red:1.2) fox in the snow")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    inputs = {"c_crossattn": cond.expand(2, -1, -1)}
    if family == "sdxl":
        inputs["pooled_output"] = pooled.expand(2, -1)
    out = model(x, torch.tensor([2.5, 0.7]), inputs)
    return out, cond, pooled


def _loaded(path: Path) -> tuple[Any, Any]:
    model, clip, _vae = adapters.load_checkpoint(path)
    return model, clip


def _reference(tmp_path: Path, sd: dict[str, torch.Tensor], family: str) -> tuple[torch.Tensor, ...]:
    path = tmp_path / "merged.safetensors"
    save_file(sd, str(path))
    return _probe(*_loaded(path), family)


def test_kohya_lora_on_unet_and_text_encoder_matches_merged_weights(
    bases: dict[str, Any], tmp_path: Path
) -> None:
    path, sd = bases["sd1"]
    strength_model, strength_clip = 0.8, 1.3
    # kohya names the UNet in the diffusers layout: down_blocks.0.attentions.0 is input_blocks.1.1.
    unet_module = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    up, down = _pair(32, (tiny_pipeline.CLIP_WIDTH,), 1)
    conv_up, conv_down = _pair(32, (32, 3, 3), 2)  # LoCon on a ResBlock's 3x3 convolution
    te_up, te_down = _pair(64, (64,), 3)
    lora = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": down,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": up,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_resnets_1_conv1.lora_down.weight": conv_down,
        "lora_unet_down_blocks_0_resnets_1_conv1.lora_up.weight": conv_up,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": te_down,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": te_up,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(8.0),
    }
    lora_path = tmp_path / "kohya.safetensors"
    save_file(lora, str(lora_path))

    merged = _merge(sd, f"model.diffusion_model.{unet_module}.weight", up, down, strength_model * 2.0 / RANK)
    merged = _merge(
        merged,
        "model.diffusion_model.input_blocks.2.0.in_layers.2.weight",
        conv_up,
        conv_down,
        strength_model,
    )
    merged = _merge(
        merged,
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        te_up,
        te_down,
        strength_clip * 8.0 / RANK,
    )
    want = _reference(tmp_path, merged, "sd1")

    model, clip = _loaded(path)
    before = _probe(model, clip, "sd1")
    patched_model, patched_clip = adapters.apply_lora(model, clip, lora_path, strength_model, strength_clip)
    got = _probe(patched_model, patched_clip, "sd1")
    for g, w, b in zip(got, want, before, strict=True):
        torch.testing.assert_close(g, w, **TOL)
        assert (g - b).abs().max() > 1e-3  # the LoRA really changes each output

    # Reversible: the base adapters (and the cached modules under them) are untouched.
    after = _probe(model, clip, "sd1")
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)


def test_diffusers_peft_lora_on_sdxl_both_text_encoders(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sdxl"]
    # SDXL's tiny UNet has attention on its second level only: down_blocks.1.attentions.0 is
    # input_blocks.4.1; up_blocks.0.attentions.2 is output_blocks.2.1.
    targets = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q": (
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
            64,
            (64,),
        ),
        "unet.up_blocks.0.attentions.2.proj_out": (
            "model.diffusion_model.output_blocks.2.1.proj_out.weight",
            64,
            (64,),
        ),
        "text_encoder.text_model.encoder.layers.1.mlp.fc1": (
            "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
            128,
            (64,),
        ),
    }
    lora: dict[str, torch.Tensor] = {}
    merged = dict(sd)
    for seed, (module, (key, out_features, in_shape)) in enumerate(targets.items()):
        up, down = _pair(out_features, in_shape, 10 + seed)
        lora[f"{module}.lora_A.weight"] = down
        lora[f"{module}.lora_B.weight"] = up
        strength = 0.7 if module.startswith("unet.") else 1.5
        merged = _merge(merged, key, up, down, strength)  # PEFT without alpha: scale 1
    # OpenCLIP-G (text_encoder_2) is stored with fused q/k/v; patch its MLP, which maps one to one.
    up, down = _pair(64, (128,), 20)
    lora["text_encoder_2.text_model.encoder.layers.0.mlp.fc2.lora_A.weight"] = down
    lora["text_encoder_2.text_model.encoder.layers.0.mlp.fc2.lora_B.weight"] = up
    merged = _merge(
        merged, "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight", up, down, 1.5
    )
    lora_path = tmp_path / "peft.safetensors"
    save_file(lora, str(lora_path))

    want = _reference(tmp_path, merged, "sdxl")
    model, clip = _loaded(path)
    before = _probe(model, clip, "sdxl")
    got = _probe(*adapters.apply_lora(model, clip, lora_path, 0.7, 1.5), "sdxl")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    assert (got[2] - before[2]).abs().max() > 1e-3  # pooled output: OpenCLIP-G was patched
    for a, b in zip(_probe(model, clip, "sdxl"), before, strict=True):
        assert torch.equal(a, b)


def test_loha_and_two_stacked_loras(bases: dict[str, Any], tmp_path: Path) -> None:
    path, sd = bases["sd1"]
    g = torch.Generator().manual_seed(7)
    w1a, w1b = torch.randn(32, 2, generator=g) * 0.3, torch.randn(2, 64, generator=g) * 0.3
    w2a, w2b = torch.randn(32, 2, generator=g) * 0.3, torch.randn(2, 64, generator=g) * 0.3
    module = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v"
    loha = {
        f"{module}.hada_w1_a": w1a,
        f"{module}.hada_w1_b": w1b,
        f"{module}.hada_w2_a": w2a,
        f"{module}.hada_w2_b": w2b,
        f"{module}.alpha": torch.tensor(1.0),
    }
    loha_path = tmp_path / "loha.safetensors"
    save_file(loha, str(loha_path))
    up, down = _pair(32, (tiny_pipeline.CLIP_WIDTH,), 4)
    second = {f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up}
    second_path = tmp_path / "second.safetensors"
    save_file(second, str(second_path))

    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    merged = dict(sd)
    merged[key] = sd[key] + 0.9 * ((w1a @ w1b) * (w2a @ w2b)) * (1.0 / 2) - 0.4 * (up @ down)
    want = _reference(tmp_path, merged, "sd1")

    model, clip = _loaded(path)
    model, _ = adapters.apply_lora(model, None, loha_path, 0.9, 0.0)
    model, _ = adapters.apply_lora(model, None, second_path, -0.4, 0.0)
    got = _probe(model, clip, "sd1")
    torch.testing.assert_close(got[0], want[0], **TOL)


def test_strength_zero_and_unknown_files(bases: dict[str, Any], tmp_path: Path) -> None:
    path, _ = bases["sd1"]
    model, clip = _loaded(path)
    up, down = _pair(32, (tiny_pipeline.CLIP_WIDTH,), 1)
    lora_path = tmp_path / "unet_only.safetensors"
    save_file(
        {
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": down,
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_up.weight": up,
        },
        str(lora_path),
    )
    same_model, same_clip = adapters.apply_lora(model, clip, lora_path, 0.0, 1.0)
    assert same_model is model and same_clip is clip  # nothing for the CLIP, strength 0 for the UNet
    only_model, none_clip = adapters.apply_lora(model, None, lora_path, 1.0, 0.0)
    assert only_model is not model and none_clip is None

    empty = tmp_path / "not_a_lora.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(empty))
    with pytest.raises(LoraError, match="not_a_lora.safetensors"):
        adapters.apply_lora(model, clip, empty, 1.0, 1.0)
    other = tmp_path / "other_model.safetensors"
    save_file(
        {"lora_unet_nothing_here.lora_down.weight": down, "lora_unet_nothing_here.lora_up.weight": up},
        str(other),
    )
    with pytest.raises(LoraError, match="other_model.safetensors"):
        adapters.apply_lora(model, clip, other, 1.0, 1.0)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(LoraError, match="garbage.safetensors"):
        adapters.apply_lora(model, clip, garbage, 1.0, 1.0)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_names_agree_with_diffusers_own_converter(family: str) -> None:
    """Our UNet -> diffusers module map, checked against ``convert_ldm_unet_checkpoint``."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from plugins.core_nodes.models.unet import build_unet

    weights = tiny_sd.unet_weights(family)
    unet = build_unet(weights)
    config = tiny_sd.diffusers_unet_config(family)
    converted = convert_ldm_unet_checkpoint(
        {f"model.diffusion_model.{k}": v for k, v in weights.items()}, config
    )
    modules = [
        n for n, m in unet.named_modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)
    ]
    names = unet_diffusers_names(unet.config, modules)
    assert set(names) == set(modules)
    for ours, theirs in names.items():
        assert torch.equal(converted[theirs + ".weight"], weights[ours + ".weight"]), (ours, theirs)


def test_key_formats_are_read() -> None:
    t = torch.ones(2, 2)
    deltas = read_deltas(
        {
            "a.lora_down.weight": t,
            "a.lora_up.weight": t,
            "a.alpha": torch.tensor(1.0),
            "unet.b.attn1.processor.to_out_lora.down.weight": t,
            "unet.b.attn1.processor.to_out_lora.up.weight": t,
            "c.lora.down.weight": t,
            "c.lora.up.weight": t,
            "incomplete.lora_down.weight": t,
        }
    )
    assert sorted(deltas) == ["a", "c", "unet.b.attn1.to_out.0"]
    assert deltas["a"].scale == 0.5
