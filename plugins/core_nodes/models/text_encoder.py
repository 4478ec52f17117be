"""Prompt to conditioning: tokenizers + CLIP models, clip skip and the reference's prompt weights.

A weight ``w`` on a token moves that token's output away from the empty prompt's output at the
same position: ``out = empty + (out - empty) * w``. Weight 1 leaves it alone, 0 makes it the empty
prompt's, and the empty prompt is only encoded when some weight differs from 1.

Per family (the reference's defaults): SD1 uses CLIP-L's final-normed last layer; SD2 uses
OpenCLIP-H's penultimate layer, final-normed; SDXL concatenates CLIP-L and OpenCLIP-G penultimate
layers without the final norm and takes the pooled output from OpenCLIP-G's projection. A clip
skip of ``-n`` (``set_clip_layer``) selects layer ``-n`` on every encoder, keeping each encoder's
norm rule; ``-1`` is the last layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .clip import ClipTextModel, EncoderKind, build_model, extract_text_encoders
from .operations import Operations
from .tokenizer import END_TOKEN, START_TOKEN, EmbeddingLookup, PromptTokenizer, make_tokenizers

__all__ = [
    "ClipEncoder",
    "TextEncoderStack",
    "load_state_dict_file",
    "read_embedding",
    "stack_from_encoder_files",
    "stack_from_state_dict",
]

Chunks = list[list[tuple[Any, ...]]]


@dataclass
class ClipEncoder:
    """One text encoder and how the family reads it."""

    model: ClipTextModel
    default_layer: int | None  # None: the final-normed last layer
    norm_hidden: bool
    pad_token: int
    layer: int | None = None
    # False: the pooled output is taken before the text projection (``return_pooled="unprojected"``).
    project_pooled: bool = True

    def __post_init__(self) -> None:
        self.layer = self.default_layer

    def set_layer(self, layer: int | None) -> None:
        # A skip deeper than the model falls back to the last layer, like the reference.
        if layer is not None and abs(layer) > self.model.config.layers:
            layer = None
        self.layer = layer

    def _inputs(self, chunks: Chunks) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids and, when a chunk holds embedding vectors, the input embeddings."""
        table = self.model.embeddings.token_embedding
        ids = torch.tensor(
            [[t if isinstance(t, int) else 0 for t, *_ in chunk] for chunk in chunks],
            dtype=torch.long,
            device=table.weight.device,
        )
        vectors = [
            (r, c, t)
            for r, chunk in enumerate(chunks)
            for c, (t, *_) in enumerate(chunk)
            if not isinstance(t, int)
        ]
        if not vectors:
            return ids, None
        embeds = table(ids)
        width = embeds.shape[-1]
        for r, c, vector in vectors:
            if vector.shape[-1] == width:
                embeds[r, c] = vector.to(embeds.device, embeds.dtype)
        return ids, embeds

    @torch.no_grad()
    def encode(self, chunks: Chunks) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning [1, 77 * chunks, width] and pooled [1, dim] (first chunk's), float32."""
        weighted = any(w != 1.0 for chunk in chunks for _, w, *_ in chunk)
        batch = list(chunks)
        if weighted:
            length = len(chunks[0])
            batch.append([(START_TOKEN, 1.0), (END_TOKEN, 1.0)] + [(self.pad_token, 1.0)] * (length - 2))
        ids, embeds = self._inputs(batch)
        out = self.model(ids, embeds=embeds, hidden_layer=self.layer, norm_hidden=self.norm_hidden)
        z = (out.last if self.layer is None else out.hidden).float()  # type: ignore[union-attr]
        if weighted:
            empty, z = z[-1], z[:-1].clone()
            weights = torch.tensor(
                [[w for _, w, *_ in chunk] for chunk in chunks], dtype=z.dtype, device=z.device
            ).unsqueeze(-1)
            # Only weighted tokens are touched, so weight-1 outputs stay bit-identical.
            z = torch.where(weights != 1.0, empty + (z - empty) * weights, z)
        pooled = out.pooled if self.project_pooled or out.unprojected is None else out.unprojected
        return z.reshape(1, -1, z.shape[-1]), pooled[0:1].float()


@dataclass
class TextEncoderStack:
    """A family's tokenizers and encoders: ``encode(text) -> (conditioning, pooled)``."""

    family: str
    tokenizers: dict[str, PromptTokenizer]
    encoders: dict[str, ClipEncoder]

    def tokenize(self, text: str) -> dict[str, Chunks]:
        return {name: tok.tokenize_with_weights(text) for name, tok in self.tokenizers.items()}

    def set_clip_layer(self, layer: int | None) -> None:
        """Clip skip: ``-1`` last layer, ``-2`` penultimate, ...; ``None`` restores the default."""
        for encoder in self.encoders.values():
            encoder.set_layer(encoder.default_layer if layer is None else layer)

    def encode_tokens(self, tokens: Mapping[str, Chunks]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = {name: self.encoders[name].encode(chunks) for name, chunks in tokens.items()}
        if set(outputs) == {"l", "g"}:
            (l_cond, _), (g_cond, g_pooled) = outputs["l"], outputs["g"]
            cut = min(l_cond.shape[1], g_cond.shape[1])
            return torch.cat([l_cond[:, :cut], g_cond[:, :cut]], dim=-1), g_pooled
        (only,) = outputs.values()
        return only

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(text))

    def to(self, device: torch.device | str) -> TextEncoderStack:
        for encoder in self.encoders.values():
            encoder.model.to(device)
        return self


# Per encoder name: (default layer, final norm on the hidden layer) in each family.
_FAMILY_LAYERS: dict[str, dict[str, tuple[int | None, bool]]] = {
    "sd1": {"l": (None, True)},
    "sd2": {"h": (-2, True)},
    "sdxl": {"l": (-2, False), "g": (-2, False)},
    "sdxl_refiner": {"g": (-2, False)},
}


def _family(names: set[str]) -> str:
    for family, layers in _FAMILY_LAYERS.items():
        if set(layers) == names:
            return family
    raise ValueError(f"no model family uses the text encoders {sorted(names)}")


def _stack(
    family: str, encoders: dict[str, ClipEncoder], embeddings: EmbeddingLookup | None
) -> TextEncoderStack:
    tokenizers = make_tokenizers(family, embeddings)
    for name, tokenizer in tokenizers.items():
        # Embedding files are matched by vector width; ask for what this model really takes.
        tokenizer.embedding_size = encoders[name].model.config.width
    return TextEncoderStack(family, tokenizers, encoders)


def stack_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    embeddings: EmbeddingLookup | None = None,
    kinds: Mapping[str, EncoderKind] | None = None,
    heads: Mapping[str, int] | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """The text encoders of a single-file checkpoint or of standalone encoder files merged into one
    dict. ``kinds``/``heads`` override what the layout and shapes imply, per encoder name;
    ``operations`` / ``weight_dtype`` are :func:`~.clip.build_model`'s."""
    found = extract_text_encoders(sd)
    if not found:
        raise ValueError("no CLIP text encoder weights found")
    family = _family(set(found))
    encoders: dict[str, ClipEncoder] = {}
    for name, (kind, weights) in found.items():
        model = build_model(
            weights, (kinds or {}).get(name, kind), (heads or {}).get(name), operations, weight_dtype
        )
        layer, norm = _FAMILY_LAYERS[family][name]
        pad = END_TOKEN if name == "l" else 0
        encoders[name] = ClipEncoder(model, layer, norm, pad)
    return _stack(family, encoders, embeddings)


def stack_from_encoder_files(
    parts: Mapping[str, Mapping[str, torch.Tensor]],
    embeddings: EmbeddingLookup | None = None,
    heads: Mapping[str, int] | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """Standalone ``text_encoders/`` files, each named by its role: ``l`` (CLIP-L), ``h`` or ``g``.

    The caller knows the roles (CLIPLoader's type, DualCLIPLoader's pair), so shapes are not
    used to guess them; each file may be in the transformers or the OpenCLIP layout.
    ``operations`` / ``weight_dtype`` are :func:`~.clip.build_model`'s.
    """
    kinds: dict[str, EncoderKind] = {"l": "clip_l", "h": "clip_h", "g": "clip_g"}
    family = _family(set(parts))
    encoders: dict[str, ClipEncoder] = {}
    for name, sd in parts.items():
        found = extract_text_encoders(sd)
        if len(found) != 1:
            raise ValueError(f"expected one text encoder for {name!r}, found {len(found)}")
        ((_, (_, weights)),) = found.items()
        model = build_model(weights, kinds[name], (heads or {}).get(name), operations, weight_dtype)
        layer, norm = _FAMILY_LAYERS[family][name]
        encoders[name] = ClipEncoder(model, layer, norm, END_TOKEN if name == "l" else 0)
    return _stack(family, encoders, embeddings)


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a pickle only through ``weights_only`` loading."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read model file {path.name}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"model file {path.name} holds no tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_embedding(path: str | os.PathLike[str], key: str, size: int) -> torch.Tensor | None:
    """Textual-inversion vectors [n, size] from a file in any of the usual layouts, or None.

    Layouts: the A1111 ``string_to_param`` dict, SDXL's ``clip_l``/``clip_g`` keys (``key``
    picks), or a file whose tensors are the vectors themselves.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        data: Any = load_state_dict_file(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot read embedding {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]
    elif key in data:
        data = {key: data[key]}
    for value in data.values():
        if isinstance(value, torch.Tensor) and value.shape[-1] == size:
            return value.reshape(-1, size).float()
    return None
