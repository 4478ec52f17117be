"""LoRA keys of the Flux transformer, and changes to parts of its fused layers made whole.

Flux LoRAs come in three namings:

* the single-file names (what kohya / ai-toolkit's ``lora_unet_double_blocks_0_img_attn_qkv``
  and the generic ``diffusion_model.double_blocks.0.img_attn.qkv`` spell): one of our modules;
* diffusers' ``FluxTransformer2DModel`` names (``transformer.transformer_blocks.0.attn.to_q``,
  SimpleTuner's ``lycoris_`` and OneTrainer's ``lora_transformer_`` underscored forms), where
  q, k and v (and in single blocks the MLP input ``proj_mlp``) are separate layers while ours
  are fused: each names a block of rows of one fused weight. diffusers' final modulation also
  keeps (scale, shift) where ours keeps (shift, scale);
* XLabs' attention-processor names (``double_blocks.0.processor.qkv_lora1`` for the image
  stream, ``qkv_lora2`` / ``proj_lora2`` for the text stream, ``single_blocks.N.processor.qkv_lora``
  for the q/k/v rows of ``linear1``), renamed by :func:`convert_xlabs_keys` before reading.

:func:`fuse_slices` turns the changes to row blocks of one weight into one change of the whole
weight (:func:`.lora_fused.fuse_row_blocks`, shared with SD3's MMDiT).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from .flux import FluxConfig
from .lora import Delta, Deltas
from .lora_fused import PREFIX, RowBlock, fuse_row_blocks, key_maps

__all__ = [
    "RowBlock",
    "convert_xlabs_keys",
    "diffusers_targets",
    "flux_key_map",
    "flux_slice_map",
    "fuse_slices",
    "is_flux_network",
]


def is_flux_network(net: nn.Module | None) -> bool:
    return isinstance(getattr(net, "config", None), FluxConfig)


def diffusers_targets(config: FluxConfig) -> dict[str, RowBlock]:
    """diffusers' module names -> the block of one of our weights each one is."""
    h, m = config.hidden_size, config.mlp_hidden
    out: dict[str, RowBlock] = {}
    for i in range(config.depth):
        ours, theirs = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for side, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for n, name in enumerate(names):
                out[f"{theirs}attn.{name}"] = RowBlock(f"{ours}{side}_attn.qkv", n * h, h)
        for theirs_name, ours_name in (
            ("attn.to_out.0", "img_attn.proj"),
            ("attn.to_add_out", "txt_attn.proj"),
            ("norm1.linear", "img_mod.lin"),
            ("norm1_context.linear", "txt_mod.lin"),
            ("ff.net.0.proj", "img_mlp.0"),
            ("ff.net.2", "img_mlp.2"),
            ("ff_context.net.0.proj", "txt_mlp.0"),
            ("ff_context.net.2", "txt_mlp.2"),
        ):
            out[theirs + theirs_name] = RowBlock(ours + ours_name)
    for i in range(config.depth_single_blocks):
        ours, theirs = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for n, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{theirs}attn.{name}"] = RowBlock(f"{ours}linear1", n * h, h)
        out[theirs + "proj_mlp"] = RowBlock(f"{ours}linear1", 3 * h, m)
        out[theirs + "norm.linear"] = RowBlock(f"{ours}modulation.lin")
        out[theirs + "proj_out"] = RowBlock(f"{ours}linear2")
    for theirs_name, ours_name in (
        ("x_embedder", "img_in"),
        ("context_embedder", "txt_in"),
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("proj_out", "final_layer.linear"),
    ):
        out[theirs_name] = RowBlock(ours_name)
    out["norm_out.linear"] = RowBlock("final_layer.adaLN_modulation.1", swap=True)
    return out


def flux_key_map(net: nn.Module) -> dict[str, str]:
    """LoRA module keys that name one whole module of ``net`` -> our module name."""
    config: FluxConfig = net.config  # type: ignore[assignment]
    return key_maps(net, diffusers_targets(config))[0]


def flux_slice_map(net: nn.Module) -> dict[str, RowBlock]:
    """LoRA module keys that name a block of rows of a fused weight (or a swapped one)."""
    config: FluxConfig = net.config  # type: ignore[assignment]
    keys = key_maps(net, diffusers_targets(config))[1]
    # The q/k/v rows of a single block's linear1 under one name (XLabs' qkv_lora, converted).
    for i in range(config.depth_single_blocks):
        block = RowBlock(f"single_blocks.{i}.linear1", 0, 3 * config.hidden_size)
        for key in (f"single_blocks.{i}.linear1_qkv", f"{PREFIX}single_blocks.{i}.linear1_qkv"):
            keys[key] = block
    return keys


# XLabs: ``<block>.processor.<layer>.down.weight`` / ``.up.weight``.
_XLABS = re.compile(r"^(.*?)\.processor\.(qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|qkv_lora|proj_lora)\.(down|up)\.weight$")
_XLABS_LAYERS = {
    "qkv_lora1": "img_attn.qkv",
    "qkv_lora2": "txt_attn.qkv",
    "proj_lora1": "img_attn.proj",
    "proj_lora2": "txt_attn.proj",
    "qkv_lora": "linear1_qkv",
    "proj_lora": "linear2",
}


def convert_xlabs_keys(sd: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``sd`` with XLabs' processor keys renamed to the single-file module names (``sd`` itself
    when it has none). XLabs files carry no alpha: their changes apply at scale 1."""
    if not any(".processor." in k and "_lora" in k for k in sd):
        return sd
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _XLABS.match(key)
        if match is None:
            out[key] = value
            continue
        block, layer, part = match.groups()
        out[f"{block}.{_XLABS_LAYERS[layer]}.lora_{part}.weight"] = value
    return out


def fuse_slices(deltas: Mapping[str, Delta], net: nn.Module) -> Deltas:
    """``deltas`` with Flux's changes to row blocks of its fused weights made whole
    (:func:`.lora_fused.fuse_row_blocks` over :func:`flux_slice_map` / :func:`flux_key_map`)."""
    return fuse_row_blocks(deltas, net, flux_slice_map(net), flux_key_map(net))
