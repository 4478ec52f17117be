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

import logging
import numbers
import os
from collections.abc import Mapping, Sequence
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
# One row of a batch: token ids, and embedding vectors ([width] or [n, width]) standing in for tokens.
Row = Sequence[Any]

log = logging.getLogger(__name__)


def _token_id(item: Any) -> int | None:
    """``item`` as a token id, or None when it is an embedding vector."""
    if isinstance(item, numbers.Integral):
        return int(item)
    if isinstance(item, torch.Tensor) and item.ndim == 0 and not item.is_floating_point():
        return int(item)
    return None


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

    def _inputs(self, rows: Sequence[Row]) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
        """Token ids [batch, tokens] and the embedding vectors as ``(row, position, vector)``.

        As the reference's encoder reads a row: a vector ``[n, width]`` takes n positions (0
        stands for it among the ids); one of another width than the model's is left out (the
        row gets shorter). A tensor row counts as its ids.
        """
        width = self.model.config.width
        ids: list[list[int]] = []
        vectors: list[tuple[int, int, torch.Tensor]] = []
        for r, row in enumerate(rows):
            items = row.tolist() if isinstance(row, torch.Tensor) else row
            out: list[int] = []
            for item in items:
                token = _token_id(item)
                if token is not None:
                    out.append(token)
                    continue
                vector = torch.as_tensor(item)
                if vector.ndim == 0 or vector.shape[-1] != width:
                    log.warning(
                        "an embedding of width %s does not fit this text encoder (%s wide): left out",
                        tuple(vector.shape)[-1:] or "scalar", width,
                    )
                    continue
                for v in vector.reshape(-1, width):
                    vectors.append((r, len(out), v))
                    out.append(0)
            ids.append(out)
        if len({len(row) for row in ids}) > 1:
            raise ValueError(f"token rows of one batch must be equally long, got lengths {[len(r) for r in ids]}")
        if ids and len(ids[0]) > self.model.config.max_positions:
            raise ValueError(
                f"a row of {len(ids[0])} tokens is longer than this text encoder's "
                f"{self.model.config.max_positions} positions"
            )
        device = self.model.embeddings.token_embedding.weight.device
        return torch.tensor(ids, dtype=torch.long, device=device), vectors

    @torch.no_grad()
    def forward_rows(self, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's ``SDClipModel.forward``: rows of token ids (embedding vectors among
        them) -> ``(z [rows, tokens, width], pooled [rows, dim])`` in float32, unweighted.

        ``z`` is the final-normed last layer, or ``layer``'s output (final-normed when
        ``norm_hidden``); ``pooled`` is each row's state at its first end token (its last token
        when it has none), projected unless ``project_pooled`` is off.
        """
        if len(rows) == 0:
            raise ValueError("no token rows to encode")
        ids, vectors = self._inputs(rows)
        out = self.model(ids, vectors=vectors, hidden_layer=self.layer, norm_hidden=self.norm_hidden)
        z = out.last if self.layer is None else out.hidden
        pooled = out.pooled if self.project_pooled or out.unprojected is None else out.unprojected
        return z.float(), pooled.float()  # type: ignore[union-attr]

    @torch.no_grad()
    def encode(self, chunks: Chunks) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning [1, 77 * chunks, width] and pooled [1, dim] (first chunk's), float32."""
        weighted = any(w != 1.0 for chunk in chunks for _, w, *_ in chunk)
        rows: list[Row] = [[t for t, *_ in chunk] for chunk in chunks]
        if weighted:
            length = max(len(chunk) for chunk in chunks)
            rows.append([START_TOKEN, END_TOKEN] + [self.pad_token] * (length - 2))
        z, pooled = self.forward_rows(rows)
        if weighted:
            empty, z = z[-1], z[:-1].clone()
            weights = torch.tensor(
                [[w for _, w, *_ in chunk][: z.shape[1]] for chunk in chunks], dtype=z.dtype, device=z.device
            ).unsqueeze(-1)
            # Only weighted tokens are touched, so weight-1 outputs stay bit-identical.
            z = torch.where(weights != 1.0, empty + (z - empty) * weights, z)
        return z.reshape(1, -1, z.shape[-1]), pooled[0:1]


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
        if self.family == "sd3":
            from .sd3_text import encode_chunks, encode_sd3

            return encode_sd3(tokens, self.encoders, lambda name, chunks: encode_chunks(self.encoders[name], chunks))
        outputs = {name: self.encoders[name].encode(chunks) for name, chunks in tokens.items()}
        if self.family == "flux":
            from .flux_family import combine_flux

            return combine_flux(outputs)
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
    # A lookup over folders names them in ``directories``: the tokenizers' embedding_directory.
    directories = getattr(embeddings, "directories", None)
    tokenizers = make_tokenizers(family, embeddings, embedding_directory=directories)
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
    ``operations`` / ``weight_dtype`` are :func:`~.clip.build_model`'s. An SD3 checkpoint's
    (``text_encoders.clip_g`` with ``clip_l`` and perhaps ``t5xxl``) gives the SD3 stack."""
    if any(k.startswith("text_encoders.clip_g.") for k in sd):
        from .sd3_text import sd3_stack_from_state_dict

        return sd3_stack_from_state_dict(sd, embeddings, operations, weight_dtype)
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
