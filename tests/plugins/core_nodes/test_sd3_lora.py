"""LoRA on SD3 / SD3.5's MMDiT: the formats SD3.5 LoRA users have, against diffusers and against
hand-merged weights.

* diffusers / PEFT keys (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), where q,
  k and v of each attention are separate layers while ours are one fused ``qkv``: the LoRA
  loader's MMDiT equals diffusers' ``SD3Transformer2DModel`` with the same file loaded by
  ``load_lora_adapter`` and fused at the same strength (1e-4, fp32), SD3.5 medium's second
  attention and the swapped (scale, shift) modulations included;
* kohya's single-file names (``lora_unet_joint_blocks_0_x_block_attn_qkv``) with alphas, the
  reference's ``base_model.model.`` form, OneTrainer's ``lora_transformer_`` and SimpleTuner's
  ``lycoris_`` underscored diffusers names: the merged weights equal the base weights plus
  ``strength * alpha / rank * up @ down`` written out on the fused rows;
* ``comfy.lora.model_lora_keys_unet`` gives the reference's ``(key, offset)`` targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.lora import read_deltas, resolve
from tests.plugins.core_nodes.tiny_sd3 import TINY_SD35_MEDIUM, diffusers_transformer, mmdit_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TINY_SD35_MEDIUM  # three blocks, attn2 in blocks 0 and 1, block 2's text half pre-only
H = CONFIG.hidden_size
LAST = CONFIG.depth - 1


def _factors(g: torch.Generator, out_features: int, in_features: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with a change of about the weights' own size."""
    return torch.randn(out_features, rank, generator=g) * 0.3, torch.randn(rank, in_features, generator=g) * 0.3


def _write(folder: Path, name: str, sd: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))
    return folder / name


def _inputs(seed: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 6, 8, generator=g)
    context = torch.randn(2, 7, CONFIG.context_in_dim, generator=g)
    pooled = torch.randn(2, CONFIG.adm_in_channels, generator=g)
    return x, torch.tensor([812.5, 140.0]), context, pooled


def _diffusers_call(model: Any, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    return model(
        hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t, return_dict=False
    )[0]


# diffusers modules a LoRA changes: q, k, v of the image and text attentions (all or some), SD3.5
# medium's second attention, outputs, MLPs, modulations (the last block's text one and the final
# one stored (scale, shift) by diffusers), embedders and the output projection.
DIFFUSERS_MODULES = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.1.attn.add_k_proj",
    "transformer_blocks.1.attn.add_v_proj",
    "transformer_blocks.2.attn.add_q_proj",
    "transformer_blocks.1.attn2.to_q",
    "transformer_blocks.1.attn2.to_v",
    "transformer_blocks.0.attn2.to_out.0",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.1.attn.to_add_out",
    "transformer_blocks.1.ff.net.0.proj",
    "transformer_blocks.0.ff_context.net.2",
    "transformer_blocks.1.norm1.linear",
    "transformer_blocks.0.norm1_context.linear",
    f"transformer_blocks.{LAST}.norm1_context.linear",
    f"transformer_blocks.{LAST}.ff.net.2",
    "context_embedder",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.text_embedder.linear_2",
    "norm_out.linear",
    "proj_out",
)


def test_diffusers_lora_matches_diffusers_fused_lora(tmp_path: Path) -> None:
    sd = mmdit_weights(CONFIG, seed=2)
    theirs = diffusers_transformer(CONFIG, sd)
    g = torch.Generator().manual_seed(4)
    lora: dict[str, torch.Tensor] = {}
    for n, name in enumerate(DIFFUSERS_MODULES):
        out_features, in_features = theirs.get_submodule(name).weight.shape
        up, down = _factors(g, out_features, in_features, rank=2 + n % 3)
        lora[f"transformer.{name}.lora_A.weight"] = down
        lora[f"transformer.{name}.lora_B.weight"] = up
    strength = 0.8
    model = adapters.load_unet(_write(tmp_path, "sd35m.safetensors", sd))
    found = resolve(read_deltas(lora), model.unet, {})
    assert not found.unmatched, found.reasons
    # The separate q / k / v changes became one change per fused weight.
    assert {
        "joint_blocks.0.x_block.attn.qkv.weight",
        "joint_blocks.1.context_block.attn.qkv.weight",
        "joint_blocks.1.x_block.attn2.qkv.weight",
        f"joint_blocks.{LAST}.context_block.adaLN_modulation.1.weight",
    } <= set(found.unet)
    patched, _ = adapters.apply_lora(model, None, _write(tmp_path / "loras", "peft.safetensors", lora), strength, 0.0)
    assert patched is not None

    theirs.load_lora_adapter(lora, prefix="transformer", adapter_name="sd3_peft")
    theirs.set_adapters(["sd3_peft"], weights=[strength])
    theirs.fuse_lora()
    x, t, ctx, pooled = _inputs()
    with torch.no_grad():
        got = patched.weights.call(x, t, ctx, pooled)
        plain = model.unet(x, t, ctx, pooled)
        expected = _diffusers_call(theirs, x, t, ctx, pooled)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (plain - expected).abs().max() > 1e-2  # the LoRA really changes the output
    with torch.no_grad():
        again = model.weights.call(x, t, ctx, pooled)
    assert torch.equal(again, plain)  # the base MODEL is untouched


def _merged(model: Any, lora_path: Path, strength: float) -> dict[str, torch.Tensor]:
    patched, _ = adapters.apply_lora(model, None, lora_path, strength, 0.0)
    assert patched is not None
    return dict(patched.weights.merged())


def test_kohya_peft_onetrainer_and_lycoris_names_merge_onto_the_fused_rows(tmp_path: Path) -> None:
    sd = mmdit_weights(CONFIG, seed=6)
    model = adapters.load_unet(_write(tmp_path, "sd35m.safetensors", sd))
    g = torch.Generator().manual_seed(8)
    strength = 0.6
    expected: dict[str, torch.Tensor] = {}

    def add(param: str, rows: slice, change: torch.Tensor) -> None:
        base = expected.get(param, sd[param].clone())
        base[rows] += strength * change
        expected[param] = base

    lora: dict[str, torch.Tensor] = {}
    # kohya: whole modules by their single-file names, with alpha.
    for param, alpha in (
        ("joint_blocks.0.x_block.attn.qkv.weight", 2.0),
        ("joint_blocks.1.context_block.mlp.fc1.weight", 1.0),
        ("joint_blocks.0.x_block.attn2.proj.weight", 3.0),
        ("final_layer.adaLN_modulation.1.weight", 4.0),
    ):
        name = param.removesuffix(".weight").replace(".", "_")
        out_features, in_features = sd[param].shape
        up, down = _factors(g, out_features, in_features, rank=4)
        lora |= {f"lora_unet_{name}.lora_up.weight": up, f"lora_unet_{name}.lora_down.weight": down,
                 f"lora_unet_{name}.alpha": torch.tensor(alpha)}  # fmt: skip
        add(param, slice(None), alpha / 4 * up @ down)
    # diffusers names under the other spellings: each a block of rows of a fused qkv.
    for key, param, rows in (
        ("base_model.model.transformer_blocks.1.attn.to_k", "joint_blocks.1.x_block.attn.qkv.weight", slice(H, 2 * H)),
        ("lora_transformer_transformer_blocks_2_attn_add_v_proj", f"joint_blocks.{LAST}.context_block.attn.qkv.weight",
         slice(2 * H, 3 * H)),
        ("lycoris_transformer_blocks_0_attn2_to_q", "joint_blocks.0.x_block.attn2.qkv.weight", slice(0, H)),
    ):  # fmt: skip
        up, down = _factors(g, H, H, rank=2)
        lora |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}
        add(param, rows, up @ down)
    # The last block's pre-only text modulation: diffusers' (scale, shift), our (shift, scale).
    up, down = _factors(g, 2 * H, H, rank=2)
    key = f"transformer.transformer_blocks.{LAST}.norm1_context.linear"
    lora |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
    change = up @ down
    add(f"joint_blocks.{LAST}.context_block.adaLN_modulation.1.weight", slice(None), torch.cat([change[H:], change[:H]]))

    lora_path = _write(tmp_path / "loras", "mixed.safetensors", lora)
    found = resolve(read_deltas(lora), model.unet, {})
    assert not found.unmatched, found.reasons
    merged = _merged(model, lora_path, strength)
    assert set(merged) == set(expected)
    for param, weight in expected.items():
        torch.testing.assert_close(merged[param], weight, atol=1e-5, rtol=0)


def test_layers_a_variant_lacks_are_listed(tmp_path: Path) -> None:
    """attn2 exists only in SD3.5 medium's first blocks and the last block's text half has no MLP:
    LoRA keys for them fit no layer; a row block of the wrong size is listed with why."""
    sd = mmdit_weights(CONFIG, seed=1)
    model = adapters.load_unet(_write(tmp_path, "sd35m.safetensors", sd))
    g = torch.Generator().manual_seed(2)
    ok_up, ok_down = _factors(g, H, H, rank=2)
    bad_up, bad_down = _factors(g, H + 1, H, rank=2)
    lora = {}
    for key, (up, down) in (
        (f"transformer.transformer_blocks.{LAST}.attn2.to_q", (ok_up, ok_down)),
        (f"transformer.transformer_blocks.{LAST}.ff_context.net.2", (ok_up, ok_down)),
        ("transformer.transformer_blocks.0.attn.add_q_proj", (bad_up, bad_down)),
        ("transformer.transformer_blocks.0.attn.to_add_out", (ok_up, ok_down)),
    ):
        lora |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
    found = resolve(read_deltas(lora), model.unet, {})
    assert set(found.unet) == {"joint_blocks.0.context_block.attn.proj.weight"}
    reasons = found.reasons
    assert reasons[f"transformer.transformer_blocks.{LAST}.attn2.to_q"] == "fits no layer of this model"
    assert reasons[f"transformer.transformer_blocks.{LAST}.ff_context.net.2"] == "fits no layer of this model"
    assert "rows" in reasons["transformer.transformer_blocks.0.attn.add_q_proj"]


def test_reference_key_map_gives_offsets_for_split_layers(tmp_path: Path) -> None:
    """``comfy.lora.model_lora_keys_unet`` on an SD3 MODEL: diffusers' q / k / v as ``(key, (0,
    start, size))``, the swapped modulations as ``(key, None, swap)``, kohya names as keys; its
    patches through ``add_patches`` merge as the LoRA loader's."""
    from plugins.comfy_compat.shims.comfy import lora as comfy_lora

    sd = mmdit_weights(CONFIG, seed=12)
    model = adapters.load_unet(_write(tmp_path, "sd35m.safetensors", sd))
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    qkv = "diffusion_model.joint_blocks.1.x_block.attn2.qkv.weight"
    assert key_map["transformer.transformer_blocks.1.attn2.to_v"] == (qkv, (0, 2 * H, H))
    assert key_map["base_model.model.transformer_blocks.0.attn.add_k_proj"] == (
        "diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", (0, H, H))  # fmt: skip
    assert key_map["lora_unet_joint_blocks_2_x_block_attn_qkv"] == "diffusion_model.joint_blocks.2.x_block.attn.qkv.weight"
    assert key_map["transformer.transformer_blocks.0.norm1_context.linear"] == (
        "diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.weight")  # fmt: skip
    for name in (f"transformer.transformer_blocks.{LAST}.norm1_context.linear", "transformer.norm_out.linear"):
        assert key_map[name][1] is None and callable(key_map[name][2])
    g = torch.Generator().manual_seed(13)
    lora: dict[str, torch.Tensor] = {}
    for name, shape in (("transformer_blocks.1.attn2.to_v", (H, H)), ("norm_out.linear", (2 * H, H)),
                        ("transformer_blocks.0.attn.to_out.0", (H, H))):  # fmt: skip
        up, down = _factors(g, *shape, rank=2)
        lora |= {f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up}
    m = model.clone()
    assert len(m.add_patches(comfy_lora.load_lora(lora, key_map), 0.7)) == 3
    by_loader, _ = adapters.apply_lora_state_dict(model, None, lora, 0.7, 0.0)
    assert by_loader is not None
    ours, theirs = m.weights.merged(), by_loader.weights.merged()
    assert set(ours) == set(theirs) and len(ours) == 3
    for name, weight in theirs.items():
        torch.testing.assert_close(ours[name], weight, atol=1e-5, rtol=0)
