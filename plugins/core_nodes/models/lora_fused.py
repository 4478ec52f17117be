"""LoRA keys of transformers with fused layers (Flux, SD3's MMDiT), and changes to parts of those
layers made whole.

Our transformers keep the reference's single-file layout, where a block's q, k and v (and, in
Flux's single blocks, the MLP input) are one fused linear layer. diffusers' models keep them as
separate layers, so a LoRA trained on diffusers names a block of rows of one of our weights for
each of them (:class:`RowBlock`); diffusers also keeps some final modulations as (scale, shift)
where ours keep (shift, scale) (``swap``).

A family describes its diffusers names as a table of :class:`RowBlock` targets; from it
:func:`key_maps` gives the LoRA key maps (whole modules, row blocks) under every spelling its
trainers use, and :func:`fuse_row_blocks` turns the changes to row blocks of one weight into one
change of the whole weight, so the rest of the LoRA machinery sees one change per parameter:
low-rank pieces become one low-rank change (the ups stacked block-diagonally, each scaled by its
own alpha / rank, the downs stacked), anything else a full difference with zeros outside its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .lora import Delta, Deltas

__all__ = [
    "PREFIX",
    "RowBlock",
    "fuse_row_blocks",
    "key_maps",
    "single_file_keys",
    "spellings",
    "weighted_modules",
]

PREFIX = "diffusion_model."

Spell = Callable[[str], Iterable[str]]


def rename_to_fused(
    sd: Mapping[str, torch.Tensor], targets: Mapping[str, RowBlock], renames: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Whole weights in diffusers' names -> our single-file names: ``renames`` key by key, then each
    module of ``targets`` to its module, row blocks (separate q / k / v ...) concatenated in row
    order into the fused weight; keys neither names keep their names. (A whole checkpoint, not a
    LoRA: no target of the networks this serves is in swapped order.)"""
    out: dict[str, torch.Tensor] = {}
    rows: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in sd.items():
        if key in renames:
            out[renames[key]] = value
            continue
        module, _, param = key.rpartition(".")
        target = targets.get(module)
        if target is None:
            out[key] = value
        elif target.size:
            rows.setdefault(f"{target.module}.{param}", []).append((target.start, value))
        else:
            out[f"{target.module}.{param}"] = value
    for name, parts in rows.items():
        out[name] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start`` .. ``start + size`` of ``module``'s weight (``size`` 0: all of them);
    ``swap``: the change's two halves trade places (diffusers' (scale, shift) order)."""

    module: str
    start: int = 0
    size: int = 0
    swap: bool = False

    @property
    def whole(self) -> bool:
        """Whether it is the whole weight, in our order (a plain rename)."""
        return self.size == 0 and not self.swap


def spellings(name: str, dotted: Iterable[str] = ("transformer.",)) -> tuple[str, ...]:
    """How trainers prefix a diffusers module name: ``dotted`` prefixes as written (diffusers /
    PEFT's ``transformer.``), SimpleTuner's LyCORIS and OneTrainer's underscored forms."""
    flat = name.replace(".", "_")
    return (*(prefix + name for prefix in dotted), "lycoris_" + flat, "lora_transformer_" + flat)


def weighted_modules(net: nn.Module) -> list[str]:
    return [n for n, sub in net.named_modules() if isinstance(getattr(sub, "weight", None), nn.Parameter)]


def single_file_keys(names: Iterable[str]) -> dict[str, str]:
    """Our module names as LoRA files spell them: as they are, under the checkpoint prefixes, and
    kohya / ai-toolkit's ``lora_unet_`` underscored form."""
    keys: dict[str, str] = {}
    for name in names:
        for key in (name, PREFIX + name, "model." + PREFIX + name, "lora_unet_" + name.replace(".", "_")):
            keys[key] = name
    return keys


def key_maps(
    net: nn.Module, targets: Mapping[str, RowBlock], spell: Spell = spellings
) -> tuple[dict[str, str], dict[str, RowBlock]]:
    """(LoRA module keys naming one whole module -> our module name, keys naming a row block or a
    swapped weight -> the block) for ``net``, whose diffusers names are ``targets``; targets
    whose module ``net`` lacks are left out."""
    ours = weighted_modules(net)
    present = set(ours)
    whole = single_file_keys(ours)
    sliced: dict[str, RowBlock] = {}
    for theirs, block in targets.items():
        if block.module not in present:
            continue
        for key in spell(theirs):
            if block.whole:
                whole[key] = block.module
            else:
                sliced[key] = block
    return whole, sliced


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


def fuse_row_blocks(
    deltas: Mapping[str, Delta], net: nn.Module, slices: Mapping[str, RowBlock], whole: Mapping[str, str]
) -> Deltas:
    """``deltas`` with every change whose key ``slices`` names (rows of a fused weight, or a
    swapped one) replaced by one change of the whole parameter, keyed ``diffusion_model.<module>``
    (``.bias`` for biases); a change of the whole weight (a ``whole`` key) in the same file joins
    them (the changes add up). Pieces that cannot be made whole are listed in the answer's
    ``incomplete`` with why."""
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
