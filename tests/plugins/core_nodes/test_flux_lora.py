"""LoRA on Flux: the formats Flux users have, against diffusers and against hand-merged weights.

* diffusers / PEFT keys (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), where q,
  k, v and ``proj_mlp`` are separate layers while ours are fused: the LoRA loader's transformer
  equals diffusers' ``FluxTransformer2DModel`` with the same file loaded by ``load_lora_adapter``
  and fused at the same strength (1e-4, fp32);
* kohya / ai-toolkit single-file names (``lora_unet_double_blocks_0_img_attn_qkv``) with alphas,
  OneTrainer's underscored diffusers names and XLabs' processor names: the merged weights equal
  the base weights plus ``strength * alpha / rank * up @ down`` written out on the fused rows;
* the server's LoraLoaderModelOnly on a UNETLoader Flux samples as the hand-merged file does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.flux import build_flux
from plugins.core_nodes.models.lora import read_deltas, resolve

from .flux_reference import TINY, diffusers_flux, tiny_flux_weights
from .test_flux import _diffusers_call

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H = TINY.hidden_size


def _factors(g: torch.Generator, out_features: int, in_features: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with a change of about the weights' own size."""
    return torch.randn(out_features, rank, generator=g) * 0.3, torch.randn(rank, in_features, generator=g) * 0.3


def _write(folder: Path, name: str, sd: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))
    return folder / name


# diffusers modules a LoRA changes: q, k and v of both streams (all or some), the MLP input of
# a single block, the embedders and the final modulation (stored (scale, shift) by diffusers).
DIFFUSERS_MODULES = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.1.attn.add_k_proj",
    "transformer_blocks.1.attn.add_v_proj",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.to_add_out",
    "transformer_blocks.1.ff.net.0.proj",
    "transformer_blocks.0.ff_context.net.2",
    "transformer_blocks.1.norm1_context.linear",
    "single_transformer_blocks.0.attn.to_q",
    "single_transformer_blocks.0.attn.to_v",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.1.proj_out",
    "single_transformer_blocks.1.norm.linear",
    "x_embedder",
    "context_embedder",
    "time_text_embed.guidance_embedder.linear_1",
    "norm_out.linear",
    "proj_out",
)


def test_diffusers_lora_matches_diffusers_fused_lora(tmp_path: Path) -> None:
    sd = tiny_flux_weights(seed=2)
    theirs = diffusers_flux(sd)
    g = torch.Generator().manual_seed(4)
    lora: dict[str, torch.Tensor] = {}
    for n, name in enumerate(DIFFUSERS_MODULES):
        out_features, in_features = theirs.get_submodule(name).weight.shape
        up, down = _factors(g, out_features, in_features, rank=2 + n % 3)
        lora[f"transformer.{name}.lora_A.weight"] = down
        lora[f"transformer.{name}.lora_B.weight"] = up
    strength = 0.8
    model = adapters.load_unet(_write(tmp_path, "flux.safetensors", sd))
    lora_path = _write(tmp_path / "loras", "flux_peft.safetensors", lora)
    found = resolve(read_deltas(lora), model.unet, {})
    assert not found.unmatched, found.reasons
    # The separate q / k / v changes became one change per fused weight.
    assert {"double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"} <= set(found.unet)
    patched, _ = adapters.apply_lora(model, None, lora_path, strength, 0.0)
    assert patched is not None

    theirs.load_lora_adapter(lora, prefix="transformer", adapter_name="flux_peft")
    theirs.set_adapters(["flux_peft"], weights=[strength])
    theirs.fuse_lora()
    torch.manual_seed(3)
    x, ctx, y = torch.randn(2, 16, 8, 6), torch.randn(2, 7, 32), torch.randn(2, 24)
    t, guidance = torch.tensor([0.7, 0.3]), torch.tensor([3.5, 2.0])
    with torch.no_grad():
        got = patched.weights.call(x, t, ctx, y, guidance)
        plain = model.unet(x, t, ctx, y, guidance)
        expected = _diffusers_call(theirs, x, t, ctx, y, guidance)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    assert (plain - expected).abs().max() > 1e-2  # the LoRA really changes the output
    # The base MODEL is untouched.
    with torch.no_grad():
        again = model.weights.call(x, t, ctx, y, guidance)
    assert torch.equal(again, plain)


def _merged(model: Any, lora_path: Path, strength: float) -> dict[str, torch.Tensor]:
    patched, _ = adapters.apply_lora(model, None, lora_path, strength, 0.0)
    assert patched is not None
    return dict(patched.weights.merged())


def test_kohya_onetrainer_and_xlabs_names_merge_onto_the_fused_rows(tmp_path: Path) -> None:
    sd = tiny_flux_weights(seed=6)
    model = adapters.load_unet(_write(tmp_path, "flux.safetensors", sd))
    g = torch.Generator().manual_seed(8)
    strength = 0.6
    expected: dict[str, torch.Tensor] = {}

    def add(param: str, rows: slice, change: torch.Tensor) -> None:
        base = expected.get(param, sd[param].clone())
        base[rows] += strength * change
        expected[param] = base

    lora: dict[str, torch.Tensor] = {}
    # kohya / ai-toolkit: whole modules by their single-file names, with alpha.
    for name, param, alpha in (
        ("double_blocks_0_img_attn_qkv", "double_blocks.0.img_attn.qkv.weight", 2.0),
        ("single_blocks_1_linear1", "single_blocks.1.linear1.weight", 1.0),
        ("final_layer_adaLN_modulation_1", "final_layer.adaLN_modulation.1.weight", 3.0),
    ):
        out_features, in_features = sd[param].shape
        up, down = _factors(g, out_features, in_features, rank=4)
        lora |= {f"lora_unet_{name}.lora_up.weight": up, f"lora_unet_{name}.lora_down.weight": down,
                 f"lora_unet_{name}.alpha": torch.tensor(alpha)}  # fmt: skip
        add(param, slice(None), alpha / 4 * up @ down)
    # OneTrainer: diffusers names, underscored: k of a single block is rows H..2H of linear1.
    up, down = _factors(g, H, H, rank=2)
    lora |= {"lora_transformer_single_transformer_blocks_0_attn_to_k.lora_up.weight": up,
             "lora_transformer_single_transformer_blocks_0_attn_to_k.lora_down.weight": down}  # fmt: skip
    add("single_blocks.0.linear1.weight", slice(H, 2 * H), up @ down)
    # XLabs: qkv_lora1 is the image stream's qkv, proj_lora2 the text stream's projection,
    # a single block's qkv_lora the first 3H rows of linear1; no alpha (scale 1).
    for layer, param, rows, shape in (
        ("double_blocks.1.processor.qkv_lora1", "double_blocks.1.img_attn.qkv.weight", slice(None), (3 * H, H)),
        ("double_blocks.1.processor.proj_lora2", "double_blocks.1.txt_attn.proj.weight", slice(None), (H, H)),
        ("single_blocks.1.processor.qkv_lora", "single_blocks.1.linear1.weight", slice(0, 3 * H), (3 * H, H)),
    ):
        up, down = _factors(g, *shape, rank=3)
        lora |= {f"{layer}.up.weight": up, f"{layer}.down.weight": down}
        add(param, rows, up @ down)
    lora_path = _write(tmp_path / "loras", "mixed.safetensors", lora)
    found = resolve(read_deltas(lora), model.unet, {})
    assert not found.unmatched, found.reasons
    merged = _merged(model, lora_path, strength)
    assert set(merged) == set(expected)
    for param, weight in expected.items():
        torch.testing.assert_close(merged[param], weight, atol=1e-5, rtol=0)


def test_diffusers_final_modulation_and_partial_qkv_rows(tmp_path: Path) -> None:
    """diffusers' norm_out.linear is (scale, shift): its change lands on our (shift, scale) halves
    swapped; a LoRA on k alone changes only rows H..2H of the fused qkv."""
    sd = tiny_flux_weights(seed=9)
    model = adapters.load_unet(_write(tmp_path, "flux.safetensors", sd))
    g = torch.Generator().manual_seed(10)
    up_norm, down_norm = _factors(g, 2 * H, H, rank=2)
    up_k, down_k = _factors(g, H, H, rank=2)
    lora = {
        "transformer.norm_out.linear.lora_A.weight": down_norm,
        "transformer.norm_out.linear.lora_B.weight": up_norm,
        "transformer.transformer_blocks.1.attn.add_k_proj.lora_A.weight": down_k,
        "transformer.transformer_blocks.1.attn.add_k_proj.lora_B.weight": up_k,
        "transformer.transformer_blocks.1.attn.add_k_proj.alpha": torch.tensor(1.0),
    }
    merged = _merged(model, _write(tmp_path / "loras", "l.safetensors", lora), 1.0)
    change = up_norm @ down_norm
    norm = "final_layer.adaLN_modulation.1.weight"
    expected_norm = sd[norm] + torch.cat([change[H:], change[:H]])
    torch.testing.assert_close(merged[norm], expected_norm, atol=1e-5, rtol=0)
    qkv = "double_blocks.1.txt_attn.qkv.weight"
    expected_qkv = sd[qkv].clone()
    expected_qkv[H : 2 * H] += 0.5 * up_k @ down_k  # alpha 1 / rank 2
    torch.testing.assert_close(merged[qkv], expected_qkv, atol=1e-5, rtol=0)


def test_pieces_that_do_not_fit_are_listed(tmp_path: Path) -> None:
    sd = tiny_flux_weights(seed=1)
    model = adapters.load_unet(_write(tmp_path, "flux.safetensors", sd))
    g = torch.Generator().manual_seed(2)
    up, down = _factors(g, H + 1, H, rank=2)  # one row too many for the q rows
    ok_up, ok_down = _factors(g, H, H, rank=2)
    lora = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": down,
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": up,
        "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": ok_down,
        "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": ok_up,
        "transformer.transformer_blocks.9.attn.to_q.lora_A.weight": ok_down,
        "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": ok_up,
    }
    found = resolve(read_deltas(lora), model.unet, {})
    assert set(found.unet) == {"double_blocks.0.img_attn.proj.weight"}
    assert "transformer.transformer_blocks.0.attn.to_q" in found.unmatched
    assert "rows" in found.reasons["transformer.transformer_blocks.0.attn.to_q"]
    assert found.reasons["transformer.transformer_blocks.9.attn.to_q"] == "fits no layer of this model"


def test_fused_low_rank_equals_the_dense_difference() -> None:
    """The stacked low-rank form of split pieces is the same change as their rows written out."""
    from plugins.core_nodes.models.lora import Delta
    from plugins.core_nodes.models.lora_flux import fuse_slices

    net = build_flux(tiny_flux_weights(seed=3))
    g = torch.Generator().manual_seed(5)
    pieces = {}
    dense = torch.zeros(3 * H + TINY.mlp_hidden, H)
    for name, start, size, rank, alpha in (("to_q", 0, H, 2, 1.0), ("to_v", 2 * H, H, 3, 6.0)):
        up, down = _factors(g, size, H, rank)
        pieces[f"transformer.single_transformer_blocks.1.attn.{name}"] = Delta("lora", (up, down), alpha / rank)
        dense[start : start + size] = alpha / rank * up @ down
    up, down = _factors(g, TINY.mlp_hidden, H, 4)
    pieces["transformer.single_transformer_blocks.1.proj_mlp"] = Delta("lora", (up, down), 1.0)
    dense[3 * H :] = up @ down
    fused = fuse_slices(pieces, net)
    (delta,) = fused.values()
    assert list(fused) == ["diffusion_model.single_blocks.1.linear1"] and delta.kind == "lora"
    torch.testing.assert_close(delta.weight(dense.shape), dense, atol=1e-6, rtol=0)


def test_text_encoder_lora_on_clip_l_and_t5(tmp_path: Path) -> None:
    """kohya's ``lora_te1_`` (CLIP-L) and OneTrainer's ``lora_te2_`` (T5, numbered after CLIP-L) on
    the Flux CLIP encode as the encoders with the merged weights do."""
    from safetensors.torch import load_file

    from .test_flux import _write_files

    _write_files(tmp_path)
    folder = tmp_path / "text_encoders"
    clip_sd, t5_sd = load_file(str(folder / "clip_l.safetensors")), load_file(str(folder / "t5xxl_tiny.safetensors"))
    g = torch.Generator().manual_seed(21)
    strength, alpha, rank = 0.9, 2.0, 4
    lora: dict[str, torch.Tensor] = {}
    merged_clip, merged_t5 = dict(clip_sd), dict(t5_sd)
    for key, target, param in (
        ("lora_te1_text_model_encoder_layers_1_self_attn_q_proj", merged_clip, "text_model.encoder.layers.1.self_attn.q_proj.weight"),
        ("lora_te2_encoder_block_0_layer_0_SelfAttention_v", merged_t5, "encoder.block.0.layer.0.SelfAttention.v.weight"),
        ("lora_te3_encoder_block_1_layer_1_DenseReluDense_wo", merged_t5, "encoder.block.1.layer.1.DenseReluDense.wo.weight"),
    ):  # fmt: skip
        up, down = _factors(g, *target[param].shape, rank=rank)
        lora |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(alpha)}
        target[param] = target[param] + strength * alpha / rank * up @ down
    _write(folder, "clip_l_merged.safetensors", merged_clip)
    _write(folder, "t5_merged.safetensors", merged_t5)
    lora_path = _write(tmp_path / "loras", "te.safetensors", lora)

    base = adapters.load_clip([folder / "clip_l.safetensors", folder / "t5xxl_tiny.safetensors"], "flux")
    _, patched = adapters.apply_lora(None, base, lora_path, 0.0, strength)
    reference = adapters.load_clip([folder / "clip_l_merged.safetensors", folder / "t5_merged.safetensors"], "flux")
    assert patched is not None

    def encode(clip: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = clip.tokenize("a lighthouse at dusk")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        return cond, pooled

    got, got_pooled = encode(patched)
    expected, expected_pooled = encode(reference)
    plain, plain_pooled = encode(base)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_pooled, expected_pooled, atol=1e-5, rtol=0)
    assert (plain - expected).abs().max() > 1e-3 and (plain_pooled - expected_pooled).abs().max() > 1e-3


def test_reference_key_map_gives_offsets_for_split_layers(tmp_path: Path) -> None:
    """``comfy.lora.model_lora_keys_unet`` on a Flux MODEL maps diffusers' q / k / v to
    ``(key, (0, start, size))`` and the final modulation to ``(key, None, swap)``, as the reference;
    its patches through ``add_patches`` run as the LoRA loader's."""
    from plugins.comfy_compat.shims.comfy import lora as comfy_lora

    sd = tiny_flux_weights(seed=12)
    model = adapters.load_unet(_write(tmp_path, "flux.safetensors", sd))
    g = torch.Generator().manual_seed(13)
    lora: dict[str, torch.Tensor] = {}
    for name, shape in (("transformer_blocks.0.attn.to_v", (H, H)), ("norm_out.linear", (2 * H, H)),
                        ("single_transformer_blocks.1.proj_mlp", (TINY.mlp_hidden, H))):  # fmt: skip
        up, down = _factors(g, *shape, rank=2)
        lora |= {f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up}
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    assert key_map["transformer.transformer_blocks.0.attn.to_v"] == (
        "diffusion_model.double_blocks.0.img_attn.qkv.weight", (0, 2 * H, H))
    assert key_map["transformer.single_transformer_blocks.1.proj_mlp"] == (
        "diffusion_model.single_blocks.1.linear1.weight", (0, 3 * H, TINY.mlp_hidden))  # fmt: skip
    assert key_map["lora_unet_double_blocks_1_txt_attn_qkv"] == "diffusion_model.double_blocks.1.txt_attn.qkv.weight"
    norm_target = key_map["transformer.norm_out.linear"]
    assert norm_target[0] == "diffusion_model.final_layer.adaLN_modulation.1.weight" and norm_target[1] is None
    m = model.clone()
    assert len(m.add_patches(comfy_lora.load_lora(lora, key_map), 0.7)) == 3
    by_loader, _ = adapters.apply_lora_state_dict(model, None, lora, 0.7, 0.0)
    assert by_loader is not None
    ours, theirs = m.weights.merged(), by_loader.weights.merged()
    assert set(ours) == set(theirs) and len(ours) == 3
    for name, weight in theirs.items():
        torch.testing.assert_close(ours[name], weight, atol=1e-5, rtol=0)
    # Rows written at an offset went into a copy, not into the cached network's weight.
    assert torch.equal(model.unet.double_blocks[0].img_attn.qkv.weight, sd["double_blocks.0.img_attn.qkv.weight"])


async def test_lora_loader_model_only_through_the_server(comfy_server: Any, tmp_path: Path) -> None:
    """UNETLoader -> LoraLoaderModelOnly (a diffusers-format LoRA) -> KSampler samples as UNETLoader
    on the file with the LoRA merged by hand into the fused rows."""
    from safetensors.torch import load_file

    from .node_helpers import messages, run_prompt
    from .test_flux import _write_files

    root = tmp_path / "models"
    flux_sd, _, _ = _write_files(root)
    g = torch.Generator().manual_seed(31)
    strength = 0.8
    merged = {k: v.clone() for k, v in flux_sd.items()}
    lora: dict[str, torch.Tensor] = {}
    for name, param, start, size in (
        ("transformer_blocks.0.attn.to_k", "double_blocks.0.img_attn.qkv.weight", H, H),
        ("transformer_blocks.1.attn.add_q_proj", "double_blocks.1.txt_attn.qkv.weight", 0, H),
        ("single_transformer_blocks.0.proj_mlp", "single_blocks.0.linear1.weight", 3 * H, TINY.mlp_hidden),
        ("single_transformer_blocks.1.attn.to_v", "single_blocks.1.linear1.weight", 2 * H, H),
    ):
        up, down = _factors(g, size, H, rank=4)
        lora |= {f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up,
                 f"transformer.{name}.alpha": torch.tensor(2.0)}  # fmt: skip
        merged[param][start : start + size] += strength * 0.5 * up @ down
    _write(root / "diffusion_models", "flux_merged.safetensors", merged)
    _write(root / "loras", "flux_lora.safetensors", lora)
    server = await comfy_server(plugins=["core_nodes", "models"])
    text = "a red boat"

    def prompt(unet: str, with_lora: bool) -> dict[str, Any]:
        model: list[Any] = ["lora", 0] if with_lora else ["unet", 0]
        out = {
            "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
            "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                "clip_name2": "t5xxl_tiny.safetensors", "type": "flux"}},
            "pos": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["clip", 0], "clip_l": text, "t5xxl": text,
                                                                  "guidance": 3.5}},
            "empty": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "k": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                                                       "scheduler": "simple", "denoise": 1.0, "model": model,
                                                       "positive": ["pos", 0], "negative": ["pos", 0],
                                                       "latent_image": ["empty", 0]}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": unet}},
        }  # fmt: skip
        if with_lora:
            out["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ["unet", 0], "lora_name": "flux_lora.safetensors", "strength_model": strength}}  # fmt: skip
        return out

    latents = []
    output = Path(server.kernel.settings.output_path)
    for unet, with_lora in (("flux_tiny.safetensors", True), ("flux_merged.safetensors", False),
                            ("flux_tiny.safetensors", False)):  # fmt: skip
        frames = await run_prompt(server, prompt(unet, with_lora))
        assert not messages(frames, "execution_error"), messages(frames, "execution_error")
        saved = next(d["output"]["latents"][0] for d in messages(frames, "executed") if d["node"] == "save")
        latents.append(load_file(str(output / saved["subfolder"] / saved["filename"]))["latent_tensor"])
    with_lora, by_hand, plain = latents
    torch.testing.assert_close(with_lora, by_hand, atol=1e-4, rtol=1e-5)
    assert (with_lora - plain).abs().max() > 1e-3
