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
weight, so the rest of the LoRA machinery sees one change per parameter: low-rank pieces become
one low-rank change (the ups stacked block-diagonally, each scaled by its own alpha / rank, the
downs stacked), anything else a full difference with zeros outside its rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .flux import FluxConfig
from .lora import Delta, Deltas

__all__ = [
    "RowBlock",
    "convert_xlabs_keys",
    "diffusers_targets",
    "flux_key_map",
    "flux_slice_map",
    "fuse_slices",
    "is_flux_network",
]

PREFIX = "diffusion_model."


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start`` .. ``start + size`` of ``module``'s weight (``size`` 0: all of them);
    ``swap``: the change's two halves trade places (diffusers' (scale, shift) order)."""

    module: str
    start: int = 0
    size: int = 0
    swap: bool = False


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


def _diffusers_spellings(name: str) -> tuple[str, ...]:
    """How trainers prefix a diffusers module name: diffusers / ai-toolkit, SimpleTuner's
    LyCORIS, OneTrainer."""
    flat = name.replace(".", "_")
    return ("transformer." + name, "lycoris_" + flat, "lora_transformer_" + flat)


def _weighted_modules(net: nn.Module) -> list[str]:
    return [n for n, sub in net.named_modules() if isinstance(getattr(sub, "weight", None), nn.Parameter)]


def flux_key_map(net: nn.Module) -> dict[str, str]:
    """LoRA module keys that name one whole module of ``net`` -> our module name."""
    ours = _weighted_modules(net)
    present = set(ours)
    keys: dict[str, str] = {}
    for name in ours:
        for key in (name, PREFIX + name, "model." + PREFIX + name, "lora_unet_" + name.replace(".", "_")):
            keys[key] = name
    config: FluxConfig = net.config  # type: ignore[assignment]
    for theirs, block in diffusers_targets(config).items():
        if block.size == 0 and not block.swap and block.module in present:
            for key in _diffusers_spellings(theirs):
                keys[key] = block.module
    return keys


def flux_slice_map(net: nn.Module) -> dict[str, RowBlock]:
    """LoRA module keys that name a block of rows of a fused weight (or a swapped one)."""
    config: FluxConfig = net.config  # type: ignore[assignment]
    present = set(_weighted_modules(net))
    keys: dict[str, RowBlock] = {}
    for theirs, block in diffusers_targets(config).items():
        if (block.size or block.swap) and block.module in present:
            for key in _diffusers_spellings(theirs):
                keys[key] = block
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


# --- several changes to one weight made one ----------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    key: str
    block: RowBlock
    delta: Delta


def _rows(block: RowBlock, out_features: int) -> tuple[int, int]:
    return block.start, block.size or out_features


def _swap(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _low_rank_whole(pieces: list[_Piece], shape: torch.Size) -> Delta | None:
    """Plain low-rank pieces (no Tucker core, no DoRA) as one low-rank change, or None."""
    if any(p.delta.kind != "lora" or p.delta.dora_scale is not None for p in pieces):
        return None
    out_features, in_features = shape[0], shape[1:].numel()
    ranks = [p.delta.tensors[1].shape[0] for p in pieces]
    up = torch.zeros(out_features, sum(ranks), dtype=torch.float32)
    downs = []
    col = 0
    for piece, rank in zip(pieces, ranks, strict=True):
        piece_up, piece_down = (t.float().flatten(1) for t in piece.delta.tensors)
        start, size = _rows(piece.block, out_features)
        if piece_up.shape[0] != size or piece_down.shape[1] != in_features:
            raise ValueError(
                f"a change of {piece_up.shape[0]}x{piece_down.shape[1]} for rows of {size}x{in_features}"
            )
        if piece.block.swap:
            piece_up = _swap(piece_up)
        # Each piece keeps its own alpha / rank: folded into its columns of the stacked up.
        up[start : start + size, col : col + rank] = piece_up * piece.delta.scale
        downs.append(piece_down)
        col += rank
    return Delta("lora", (up, torch.cat(downs, dim=0)), 1.0)


def _dense_whole(pieces: list[_Piece], shape: torch.Size, param: str) -> Delta:
    """Any pieces as one full difference (zeros outside their rows)."""
    out_features = shape[0]
    full = torch.zeros(shape, dtype=torch.float32)
    for piece in pieces:
        if piece.delta.dora_scale is not None:
            raise ValueError("a DoRA change to part of a fused layer cannot be applied")
        start, size = _rows(piece.block, out_features)
        change = piece.delta.weight(torch.Size([size, *shape[1:]]))
        full[start : start + size] += _swap(change) if piece.block.swap else change
    return Delta("diff", (full,), 1.0, param=param)


def fuse_slices(deltas: Mapping[str, Delta], net: nn.Module) -> Deltas:
    """``deltas`` with every change that names rows of a fused weight (or a swapped one) replaced by
    one change of the whole parameter, keyed ``diffusion_model.<module>`` (``.bias`` for biases);
    a change of the whole weight in the same file joins them (the changes add up). Pieces that
    cannot be made whole are listed in the answer's ``incomplete`` with why."""
    slices = flux_slice_map(net)
    whole = flux_key_map(net)
    incomplete = dict(deltas.incomplete) if isinstance(deltas, Deltas) else {}

    def module_key(key: str, delta: Delta) -> str:
        return key if delta.param == "weight" else key.removesuffix("." + delta.param)

    sliced = {(slices[m].module, d.param) for k, d in deltas.items() if (m := module_key(k, d)) in slices}
    out: dict[str, Delta] = {}
    groups: dict[tuple[str, str], list[_Piece]] = {}
    for key, delta in deltas.items():
        name = module_key(key, delta)
        block = slices.get(name)
        if block is None and (whole.get(name), delta.param) in sliced:
            block = RowBlock(whole[name])
        if block is None:
            out[key] = delta
        else:
            groups.setdefault((block.module, delta.param), []).append(_Piece(key, block, delta))
    params = dict(net.named_parameters())
    for (module, param), pieces in groups.items():
        target = params.get(f"{module}.{param}")
        if target is None:
            for piece in pieces:
                incomplete[piece.key] = f"{module} has no {param}"
            continue
        try:
            fused = _low_rank_whole(pieces, target.shape) if param == "weight" else None
            out[PREFIX + module + ("" if param == "weight" else "." + param)] = fused or _dense_whole(
                pieces, target.shape, param
            )
        except ValueError as e:
            for piece in pieces:
                incomplete[piece.key] = str(e)
    return Deltas(out, incomplete)
