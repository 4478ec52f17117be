"""SD3's text encoders: CLIP-L, OpenCLIP bigG and T5-XXL, any of which may be missing.

The reference's SD3 conditioning, written out:

* CLIP-L and bigG read their penultimate layer without the final norm (as SDXL's); their outputs
  are joined on the feature axis (cut to the shorter) and zero-padded to 4096 features. Without
  CLIP-L, bigG's output is shifted right by CLIP-L's 768 features first.
* T5-XXL's final-normed last layer (prompts padded to 77 tokens) follows them along the token
  axis; without any CLIP it stands alone, and with nothing at all the conditioning is 77 zero
  tokens.
* The pooled output is CLIP-L's pooled state *before* its projection, then bigG's projected one
  (zeros for a missing encoder): 768 + 1280 features for the real models.
* An encoder given no chunks (CLIPTextEncodeSD3 leaves an empty prompt out) encodes the empty
  token row (start and end tokens for CLIP, the end token for T5), as the reference does; when
  both CLIP prompts are left out, no CLIP output is used at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .clip import build_model, extract_text_encoders
from .operations import CastOperations, Operations, has_fp8_layers
from .t5 import T5TextEncoder, build_t5, is_t5_state_dict
from .t5_tokenizer import SD3_MIN_LENGTH, T5Tokenizer
from .text_encoder import ClipEncoder, TextEncoderStack
from .tokenizer import END_TOKEN, START_TOKEN, EmbeddingLookup, make_tokenizers

__all__ = [
    "SD3_CONTEXT_WIDTH",
    "encode_chunks",
    "encode_sd3",
    "file_roles",
    "sd3_stack",
    "sd3_stack_from_files",
    "sd3_stack_from_state_dict",
    "split_checkpoint_text_encoders",
]

SD3_CONTEXT_WIDTH = 4096
CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280
_EMPTY_TOKENS = 77
_PREFIX = "text_encoders."
# The reference's prefixes inside an SD3 checkpoint, by our encoder name.
_CHECKPOINT_PARTS = {"l": "clip_l.", "g": "clip_g.", "t5xxl": "t5xxl."}

Chunks = Sequence[Sequence[tuple[Any, ...]]]
Encoder = ClipEncoder | T5TextEncoder
EncodeFn = Callable[[str, Chunks], tuple[torch.Tensor, torch.Tensor | None]]


def encode_chunks(encoder: Encoder, chunks: Chunks) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encoder.encode(chunks)``, or the empty token row's encoding when there are none."""
    if chunks:
        return encoder.encode([list(chunk) for chunk in chunks])
    row = [END_TOKEN if isinstance(encoder, ClipEncoder) else encoder.end_token]
    if isinstance(encoder, ClipEncoder):
        row.insert(0, START_TOKEN)
    z, pooled = encoder.forward_rows([row])
    return z[-1:], None if pooled is None else pooled[0:1]


def encode_sd3(
    tokens: Mapping[str, Chunks], present: Collection[str], encode: EncodeFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditioning [1, tokens, 4096], pooled [1, l + g])`` from the chunks under ``l`` /
    ``g`` / ``t5xxl``; ``present`` names the encoders this CLIP has, ``encode(name, chunks)`` runs
    one of them (see :func:`encode_chunks`)."""
    l_chunks, g_chunks = tokens.get("l") or [], tokens.get("g") or []
    lg: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    out: torch.Tensor | None = None
    if l_chunks or g_chunks:
        if "l" in present:
            lg, l_pooled = encode("l", l_chunks)
            assert l_pooled is not None
        else:
            l_pooled = torch.zeros(1, CLIP_L_WIDTH)
        if "g" in present:
            g_out, g_pooled = encode("g", g_chunks)
            assert g_pooled is not None
            if lg is not None:
                cut = min(lg.shape[1], g_out.shape[1])
                lg = torch.cat([lg[:, :cut], g_out[:, :cut].to(lg)], dim=-1)
            else:
                lg = F.pad(g_out, (CLIP_L_WIDTH, 0))
        else:
            g_pooled = torch.zeros(1, CLIP_G_WIDTH)
        if lg is not None:
            lg = F.pad(lg, (0, SD3_CONTEXT_WIDTH - lg.shape[-1]))
            out = lg
        pooled = torch.cat([l_pooled.float().cpu(), g_pooled.float().cpu()], dim=-1)
    if "t5xxl" in present:
        t5_out, _ = encode("t5xxl", tokens.get("t5xxl") or [])
        out = t5_out if lg is None else torch.cat([lg, t5_out.to(lg)], dim=-2)
    if out is None:
        out = torch.zeros(1, _EMPTY_TOKENS, SD3_CONTEXT_WIDTH)
    if pooled is None:
        pooled = torch.zeros(1, CLIP_L_WIDTH + CLIP_G_WIDTH)
    return out.float().cpu(), pooled


def sd3_stack(encoders: Mapping[str, Encoder], embeddings: EmbeddingLookup | None = None) -> TextEncoderStack:
    """An SD3 stack over whichever of ``l`` / ``g`` / ``t5xxl`` are given; its tokenizers are
    always all three (CLIPTextEncodeSD3 tokenizes each prompt for its encoder)."""
    if not encoders:
        raise ValueError("an SD3 text encoder needs at least one of CLIP-L, CLIP-G and T5-XXL")
    directories = getattr(embeddings, "directories", None)
    tokenizers: dict[str, Any] = dict(make_tokenizers("sdxl", embeddings, embedding_directory=directories))
    tokenizers["t5xxl"] = T5Tokenizer(min_length=SD3_MIN_LENGTH)
    for name, encoder in encoders.items():
        width = getattr(encoder.model.config, "width", None)
        if width is not None:
            tokenizers[name].embedding_size = width
    return TextEncoderStack("sd3", tokenizers, dict(encoders))


def build_encoders(
    parts: Mapping[str, Mapping[str, torch.Tensor]],
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> dict[str, Encoder]:
    """SD3's encoders from their weights by role (``l``, ``g``: transformers or OpenCLIP layout,
    ``t5xxl``: the reference's T5 layout), read as the reference's SD3 set reads them."""
    encoders: dict[str, Encoder] = {}
    for name in ("l", "g", "t5xxl"):
        sd = parts.get(name)
        if sd is None:
            continue
        if name == "t5xxl":
            # An fp8 T5-XXL (t5xxl_fp8_e4m3fn, sd3_medium_incl_clips_t5xxlfp8) keeps its storage
            # behind layers that cast per call, as Flux's does.
            ops = CastOperations if operations is None and has_fp8_layers(sd) else operations
            encoders[name] = T5TextEncoder(build_t5(sd, weight_dtype, ops))
            continue
        found = extract_text_encoders(sd)
        if len(found) != 1:
            raise ValueError(f"expected one CLIP text encoder for {name!r}, found {len(found)}")
        ((_, (_, weights)),) = found.items()
        model = build_model(weights, "clip_l" if name == "l" else "clip_g", None, operations, weight_dtype)
        # CLIP-L's pooled output goes in unprojected (the reference's return_projected_pooled=False).
        encoders[name] = ClipEncoder(model, -2, False, END_TOKEN if name == "l" else 0, project_pooled=name != "l")
    return encoders


def split_checkpoint_text_encoders(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An SD3 checkpoint's ``text_encoders.clip_l`` / ``clip_g`` / ``t5xxl`` weights by role,
    each without its prefix (and CLIP's ``transformer.`` level)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, sub in _CHECKPOINT_PARTS.items():
        prefix = _PREFIX + sub
        weights = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        nested = {k[len("transformer.") :]: v for k, v in weights.items() if k.startswith("transformer.")}
        weights = nested or weights
        if weights:
            parts[name] = weights
    return parts


def is_t5(sd: Mapping[str, Any]) -> bool:
    """Whether a standalone text-encoder file is a T5 encoder (with or without ``transformer.``)."""
    return is_t5_state_dict(sd) or is_t5_state_dict({k.removeprefix("transformer."): v for k, v in sd.items()})


def sd3_stack_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    embeddings: EmbeddingLookup | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """The text encoders inside an SD3 checkpoint (``text_encoders.`` keys)."""
    parts = split_checkpoint_text_encoders(sd)
    if not parts:
        raise ValueError("no SD3 text encoder weights (text_encoders.clip_l / clip_g / t5xxl) found")
    return sd3_stack(build_encoders(parts, operations, weight_dtype), embeddings)


def _clip_width(sd: Mapping[str, torch.Tensor]) -> int:
    for key, value in sd.items():
        if key.endswith("token_embedding.weight"):
            return int(value.shape[-1])
    return 0


def file_roles(files: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Mapping[str, torch.Tensor]]:
    """Standalone ``text_encoders/`` files of an SD3 set by role, from their contents (the loaders'
    slots do not say which is which): T5 by its layout; of two CLIPs the narrower is CLIP-L; a
    lone CLIP is bigG when it is 1280 wide, else CLIP-L."""
    roles: dict[str, Mapping[str, torch.Tensor]] = {}
    clips: list[Mapping[str, torch.Tensor]] = []
    for sd in files:
        if is_t5(sd):
            if "t5xxl" in roles:
                raise ValueError("two T5 encoders given; SD3 takes one T5-XXL with CLIP-L and CLIP-G")
            roles["t5xxl"] = {k.removeprefix("transformer."): v for k, v in sd.items()}
        elif _clip_width(sd):
            clips.append(sd)
        else:
            raise ValueError("a file is neither a CLIP text encoder nor a T5 encoder")
    if len(clips) > 2:
        raise ValueError("three CLIP encoders given; SD3 takes CLIP-L, CLIP-G and T5-XXL")
    if len(clips) == 2:
        narrow, wide = sorted(clips, key=_clip_width)
        if _clip_width(narrow) == _clip_width(wide):
            raise ValueError("two CLIP encoders of the same width given; SD3 takes CLIP-L and CLIP-G")
        roles["l"], roles["g"] = narrow, wide
    elif clips:
        roles["g" if _clip_width(clips[0]) == CLIP_G_WIDTH else "l"] = clips[0]
    return roles


def sd3_stack_from_files(
    files: Sequence[Mapping[str, torch.Tensor]],
    embeddings: EmbeddingLookup | None = None,
    operations: Operations | None = None,
    weight_dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """TripleCLIPLoader / DualCLIPLoader ``sd3`` / CLIPLoader ``sd3``: one to three standalone files."""
    return sd3_stack(build_encoders(file_roles(files), operations, weight_dtype), embeddings)
