"""CLIP text transformers (CLIP-L, OpenCLIP-H, OpenCLIP-G) and their checkpoint key layouts.

One module serves all three: they differ only in sizes, the MLP activation and whether a text
projection exists. Parameters are named like the transformers ``text_model.*`` layout (the layout
of standalone ``text_encoders/`` files and of SD1/SDXL's CLIP-L), so those load as they are;
OpenCLIP's layout (fused ``in_proj_weight``, ``text_projection`` as a matrix) is converted.

The configuration is read from the weights' shapes, so test-sized models work like real ones. The
number of attention heads is not in the weights: every CLIP text model uses 64-wide heads, so
``heads = width // 64`` unless the caller says otherwise.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .operations import Operations, TorchOperations, cast_plain_weights, is_default, load_into

__all__ = [
    "CLIP_G",
    "CLIP_H",
    "CLIP_L",
    "ClipTextConfig",
    "ClipTextModel",
    "ClipOutput",
    "EncoderKind",
    "TokenEmbedding",
    "build_model",
    "config_from_state_dict",
    "extract_text_encoders",
    "openclip_to_hf",
]

EncoderKind = Literal["clip_l", "clip_h", "clip_g"]
HEAD_WIDTH = 64


@dataclass(frozen=True)
class ClipTextConfig:
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    vocab_size: int = 49408
    max_positions: int = 77
    # CLIP-L was trained with the sigmoid approximation of GELU; OpenCLIP models with exact GELU.
    activation: Literal["quick_gelu", "gelu"] = "quick_gelu"
    projection_dim: int | None = None
    eos_token: int = 49407
    layer_norm_eps: float = 1e-5


CLIP_L = ClipTextConfig()
CLIP_H = ClipTextConfig(
    width=1024, layers=24, heads=16, mlp_width=4096, activation="gelu", projection_dim=1024
)
CLIP_G = ClipTextConfig(
    width=1280, layers=32, heads=20, mlp_width=5120, activation="gelu", projection_dim=1280
)


@dataclass
class ClipOutput:
    """``last``: final layer normed; ``hidden``: the requested layer's output (or None);
    ``pooled``: the end token's final-normed state, through the text projection if there is one;
    ``unprojected``: that state before the projection (the reference's ``projected_pooled=False``)."""

    last: torch.Tensor
    hidden: torch.Tensor | None
    pooled: torch.Tensor
    unprojected: torch.Tensor | None = None


class TokenEmbedding(nn.Embedding):
    """An embedding table called as the reference's text encoders call theirs:
    ``(ids, out_dtype=None)``, the vectors cast to ``out_dtype`` when given. Packs that wrap a
    CLIP's ``token_embedding`` (smZNodes' textual-inversion hook) pass both on to it."""

    def forward(self, input: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:  # noqa: A002
        out = super().forward(input)
        return out if out_dtype is None else out.to(out_dtype)


def _takes_out_dtype(module: nn.Module) -> bool:
    """Whether ``module`` is called with ``out_dtype`` (ours, the reference's layers, a pack's
    wrapper of them) rather than as a plain ``torch.nn.Embedding``."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "out_dtype" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipTextConfig, ops: Operations = TorchOperations) -> None:
        super().__init__()
        table = TokenEmbedding if ops.Embedding is nn.Embedding else ops.Embedding
        self.token_embedding = table(cfg.vocab_size, cfg.width)
        self.position_embedding = table(cfg.max_positions, cfg.width)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal  # text tokens see only earlier ones; image patches see every patch
        self.q_proj = ops.Linear(width, width)
        self.k_proj = ops.Linear(width, width)
        self.v_proj = ops.Linear(width, width)
        self.out_proj = ops.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, w // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj), heads(self.k_proj), heads(self.v_proj), is_causal=self.causal
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, w))


class _Mlp(nn.Module):
    def __init__(self, width: int, mlp_width: int, quick_gelu: bool, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.fc1 = ops.Linear(width, mlp_width)
        self.fc2 = ops.Linear(mlp_width, width)
        self.quick = quick_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h)
        return self.fc2(h)


class _Layer(nn.Module):
    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        quick_gelu: bool,
        eps: float,
        causal: bool,
        ops: Operations = TorchOperations,
    ) -> None:
        super().__init__()
        self.layer_norm1 = ops.LayerNorm(width, eps=eps)
        self.self_attn = _Attention(width, heads, causal, ops)
        self.layer_norm2 = ops.LayerNorm(width, eps=eps)
        self.mlp = _Mlp(width, mlp_width, quick_gelu, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoderLayers(nn.Module):
    """CLIP's pre-norm transformer layers (``layers.N.self_attn.q_proj``... in the transformers
    layout), shared by the text tower (causal) and the vision tower (not)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        layers: int,
        quick_gelu: bool,
        eps: float,
        causal: bool,
        ops: Operations = TorchOperations,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _Layer(width, heads, mlp_width, quick_gelu, eps, causal, ops) for _ in range(layers)
        )


class ClipTextModel(nn.Module):
    """A causal pre-norm text transformer; its state dict is the transformers layout minus
    ``text_model.`` (plus ``text_projection.weight`` when projected)."""

    def __init__(self, cfg: ClipTextConfig, operations: Operations | None = None) -> None:
        super().__init__()
        ops = TorchOperations if operations is None else operations
        self.config = cfg
        # The dtype the layers compute in; None: the weights' own (plain torch layers cannot
        # take inputs of another dtype). Casting layers get float32, as the reference encodes.
        self.compute_dtype: torch.dtype | None = None
        self.embeddings = _Embeddings(cfg, ops)
        self.encoder = ClipEncoderLayers(
            cfg.width,
            cfg.heads,
            cfg.mlp_width,
            cfg.layers,
            cfg.activation == "quick_gelu",
            cfg.layer_norm_eps,
            causal=True,
            ops=ops,
        )
        self.final_layer_norm = ops.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.text_projection = (
            ops.Linear(cfg.width, cfg.projection_dim, bias=False) if cfg.projection_dim is not None else None
        )

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` [batch, tokens] through ``embeddings.token_embedding`` (whatever module is
        there now), one row per call with ``out_dtype=float32``, as the reference's encoder
        calls it: a pack's wrapper sees the calls it was written for."""
        table = self.embeddings.token_embedding
        if not _takes_out_dtype(table):
            return torch.cat([table(ids[r : r + 1]).float() for r in range(ids.shape[0])])
        return torch.cat([table(ids[r : r + 1], out_dtype=torch.float32) for r in range(ids.shape[0])])

    def forward(
        self,
        ids: torch.Tensor,
        embeds: torch.Tensor | None = None,
        hidden_layer: int | None = None,
        norm_hidden: bool = True,
        vectors: Sequence[tuple[int, int, torch.Tensor]] | None = None,
    ) -> ClipOutput:
        """Encode ``ids`` [batch, tokens].

        ``embeds`` replaces the token embeddings when given; ``vectors`` (``(row, position,
        vector)``: textual inversions) replace single positions' embeddings. Positions still
        come from ``ids``' length. ``hidden_layer`` (negative counts from the end, -1 is the
        last layer) also returns that layer's output, final-normed when ``norm_hidden``. The
        pooled vector sits at the first end token of each row (the last token of a row
        without one).
        """
        x = embeds if embeds is not None else self.token_embeds(ids)
        positions = self.embeddings.position_embedding.weight[: ids.shape[1]]
        # The table may be stored in another dtype (bf16 storage): read it in the compute dtype.
        dtype = self.compute_dtype or positions.dtype
        x = x.to(dtype)
        positions = positions.to(x.device, dtype)
        if vectors:
            rows = torch.tensor([r for r, _, _ in vectors], device=x.device)
            cols = torch.tensor([c for _, c, _ in vectors], device=x.device)
            values = torch.stack([v.to(x.device, x.dtype) for _, _, v in vectors])
            x = x.index_put((rows, cols), values)
        x = x + positions
        layers = self.encoder.layers
        wanted = None if hidden_layer is None else hidden_layer % len(layers)
        hidden = None
        for index, layer in enumerate(layers):
            x = layer(x)
            if index == wanted:
                hidden = x
        last = self.final_layer_norm(x)
        if hidden is not None and norm_hidden:
            hidden = self.final_layer_norm(hidden)
        is_end = ids == self.config.eos_token
        last_token = torch.full_like(ids[:, 0], ids.shape[1] - 1)
        eos_at = torch.where(is_end.any(dim=-1), is_end.int().argmax(dim=-1), last_token)
        unprojected = last[torch.arange(last.shape[0], device=last.device), eos_at]
        pooled = self.text_projection(unprojected) if self.text_projection is not None else unprojected
        return ClipOutput(last=last, hidden=hidden, pooled=pooled, unprojected=unprojected)


# --- key layouts -----------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
_RESBLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPENCLIP_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def openclip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (``token_embedding``, ``transformer.resblocks.N.*``, ``ln_final``,
    ``text_projection``) in the transformers layout this module loads."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _RESBLOCK_KEY.match(key)
        if match:
            layer, rest = match.groups()
            prefix = f"encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part
                continue
            module, param = rest.rsplit(".", 1)
            if module in _OPENCLIP_RENAMES:
                out[f"{prefix}{_OPENCLIP_RENAMES[module]}.{param}"] = value
            continue
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key.split(".", 1)[1]] = value
        elif key == "text_projection":
            # OpenCLIP multiplies x @ P; a Linear layer stores P transposed.
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out[key] = value
    return out


def config_from_state_dict(
    sd: Mapping[str, torch.Tensor], kind: EncoderKind | None = None, heads: int | None = None
) -> ClipTextConfig:
    """Sizes from a transformers-layout state dict; ``kind`` picks the activation.

    Without ``kind``, a 768-wide model is taken for CLIP-L and anything else for OpenCLIP.
    """
    try:
        vocab, width = sd["embeddings.token_embedding.weight"].shape
        positions = sd["embeddings.position_embedding.weight"].shape[0]
        mlp_width = sd["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"not a CLIP text encoder: missing {exc.args[0]}") from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k)))
    if kind is None:
        kind = "clip_l" if width == 768 else "clip_g"
    projection = sd.get("text_projection.weight")
    if heads is None:
        heads = max(1, width // HEAD_WIDTH)
    return replace(
        CLIP_L,
        width=int(width),
        layers=layers,
        heads=heads,
        mlp_width=int(mlp_width),
        vocab_size=int(vocab),
        max_positions=int(positions),
        activation="quick_gelu" if kind == "clip_l" else "gelu",
        projection_dim=None if projection is None else int(projection.shape[0]),
    )


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _hf_part(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers-layout CLIP under ``prefix``, with or without its ``text_model.`` level."""
    part = _strip(sd, prefix)
    nested = _strip(part, "text_model.")
    if nested:
        if "text_projection.weight" in part:
            nested["text_projection.weight"] = part["text_projection.weight"]
        part = nested
    part.pop("embeddings.position_ids", None)
    return part


def extract_text_encoders(
    sd: Mapping[str, torch.Tensor],
) -> dict[str, tuple[EncoderKind, dict[str, torch.Tensor]]]:
    """The text encoders inside a single-file checkpoint (or a standalone encoder file), by name.

    Names are the tokenizer names: ``l`` (CLIP-L), ``h`` (OpenCLIP-H, SD2), ``g`` (OpenCLIP-G,
    SDXL). Each comes in the transformers layout. An empty result means no text encoder found.
    """
    found: dict[str, tuple[EncoderKind, dict[str, torch.Tensor]]] = {}
    if any(k.startswith("conditioner.embedders.") for k in sd):
        for index in range(2):
            base = f"conditioner.embedders.{index}."
            hf = _hf_part(sd, base + "transformer.")
            if hf:
                found["l"] = ("clip_l", hf)
            openclip = _strip(sd, base + "model.")
            if openclip:
                found["g"] = ("clip_g", openclip_to_hf(openclip))
        return found
    hf = _hf_part(sd, "cond_stage_model.transformer.")
    if hf:
        found["l"] = ("clip_l", hf)
        return found
    openclip = _strip(sd, "cond_stage_model.model.")
    if openclip:
        found["h"] = ("clip_h", openclip_to_hf(openclip))
        return found
    # Standalone files: the transformers layout, or a bare OpenCLIP text tower.
    if any(k.startswith("transformer.resblocks.") for k in sd):
        converted = openclip_to_hf(sd)
        width = converted["embeddings.token_embedding.weight"].shape[1]
        found["h" if width == 1024 else "g"] = ("clip_h" if width == 1024 else "clip_g", converted)
        return found
    hf = _hf_part(sd, "")
    if "embeddings.token_embedding.weight" in hf:
        width = hf["embeddings.token_embedding.weight"].shape[1]
        name, kind = (
            ("l", "clip_l") if width == 768 else (("h", "clip_h") if width == 1024 else ("g", "clip_g"))
        )
        found[name] = (kind, hf)
    return found


# Checkpoints carry a few buffers we have no use for (position ids, logit scale, masks).
_UNUSED_KEYS = ("position_ids", "logit_scale", "attn_mask")


def build_model(
    sd: Mapping[str, torch.Tensor],
    kind: EncoderKind | None = None,
    heads: int | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> ClipTextModel:
    """A model sized from ``sd`` (transformers layout) with its weights loaded, in their dtype.

    With a caller's ``operations`` (see :mod:`.operations`) its layers are handed the tensors as
    they are; plain floating-point ones end up in ``weight_dtype`` (default: the first plain
    tensor's dtype)."""
    cfg = config_from_state_dict(sd, kind, heads)
    if not is_default(operations):
        with torch.device("meta"):
            model = ClipTextModel(cfg, operations)
        try:
            load_into(model, {k: v for k, v in sd.items() if not k.endswith(_UNUSED_KEYS)}, operations)
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"CLIP weights do not fit: {str(e).splitlines()[0][:300]}") from None
        plain = next((v.dtype for v in sd.values() if type(v) is torch.Tensor and v.is_floating_point()), None)
        cast_plain_weights(model, weight_dtype or plain or torch.float32)
        # A caller's layers cast their weights to the input's dtype (the reference's contract
        # for them): the text is encoded in float32 whatever the storage dtype.
        model.compute_dtype = torch.float32
        return model.eval().requires_grad_(False)
    with torch.device("meta"):
        model = ClipTextModel(cfg)
    dtype = sd["embeddings.token_embedding.weight"].dtype
    model = model.to_empty(device="cpu").to(dtype)
    missing, unexpected = model.load_state_dict(dict(sd), strict=False)
    unexpected = [k for k in unexpected if not k.endswith(_UNUSED_KEYS)]
    if missing or unexpected:
        raise ValueError(f"CLIP weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval().requires_grad_(False)
