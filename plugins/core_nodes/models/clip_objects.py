"""The reference's objects behind a CLIP value: its ``cond_stage_model`` and its ``tokenizer``.

Packs that build conditioning themselves (ADV_CLIP_emb, Easy-Use, smZ...) reach past the CLIP's
methods into these: ``clip.cond_stage_model.clip_l.encode_token_weights(chunks)``,
``clip.cond_stage_model.set_clip_options({"layer": -2})``, ``clip.tokenizer.clip_g...``. The
layout is the reference's: a set module (``SD1ClipModel`` / ``SD2ClipModel`` / ``SDXLClipModel``
/ ``SDXLRefinerClipModel`` there) holding one member per encoder under ``clip_l`` / ``clip_h`` /
``clip_g``, each with a ``transformer`` whose ``text_model`` is the network, so the set's state-dict
keys are the reference's (``clip_l.transformer.text_model.encoder.layers.0...``) and weight patches
written for the reference (``clip.add_patches``) find their weights.

The members encode through their CLIP (the ``encode`` callable they are built with), so its
weight patches apply per call and the cached network is never written; each member keeps the
reference's clip options (``layer`` ``"last"`` / ``"hidden"`` with ``layer_idx``), which
``encode_token_weights`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.clip import ClipTextModel
from plugins.core_nodes.models.text_encoder import Chunks, ClipEncoder
from plugins.core_nodes.models.tokenizer import PromptTokenizer

__all__ = [
    "FAMILY_CLASSES",
    "ClipMember",
    "ClipSet",
    "SD1ClipModel",
    "SD2ClipModel",
    "SDXLClipModel",
    "SDXLRefinerClipModel",
    "TokenizerSet",
    "TransformerLayout",
    "clip_set",
    "is_built_clip_set",
    "member_attr",
    "split_key",
]

# encode(encoder name, layer or None for the last normed one, chunks, projected pooled) -> (cond, pooled)
MemberEncode = Callable[[str, int | None, Chunks, bool], tuple[torch.Tensor, torch.Tensor]]

_TEXT_MODEL = ".transformer.text_model."
_PROJECTION = ".transformer.text_projection."


def member_attr(name: str) -> str:
    """The reference's attribute for encoder ``name``: ``l`` -> ``clip_l``."""
    return f"clip_{name}"


def split_key(key: str) -> tuple[str, str] | None:
    """A reference state-dict key of a CLIP's ``cond_stage_model`` -> (encoder name, our
    parameter name), or None. The reference keeps ``text_projection`` beside ``text_model``;
    ours sits inside the network, so both spellings name it."""
    if not key.startswith("clip_"):
        return None
    member, _, rest = key.partition(".")
    name = member[len("clip_") :]
    dotted = "." + rest
    if dotted.startswith(_TEXT_MODEL):
        return name, dotted[len(_TEXT_MODEL) :]
    if dotted.startswith(_PROJECTION):
        return name, "text_projection." + dotted[len(_PROJECTION) :]
    return None


class TransformerLayout(nn.Module):
    """A member's ``transformer``: the network as ``text_model`` (the reference's nesting)."""

    def __init__(self, model: ClipTextModel) -> None:
        super().__init__()
        self.text_model = model
        self.num_layers = model.config.layers

    @property
    def text_projection(self) -> nn.Module | None:
        # A property, not a child: registering it twice would list its weight under two keys.
        return self.text_model.text_projection

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.embeddings.token_embedding.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.text_model.embeddings.token_embedding = embeddings

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.text_model(*args, **kwargs)


class ClipMember(nn.Module):
    """One encoder as the reference's ``SDClipModel``: ``transformer``, clip options and
    ``encode_token_weights(chunks) -> (cond, pooled)`` through its CLIP."""

    def __init__(self, name: str, encoder: ClipEncoder, encode: MemberEncode) -> None:
        super().__init__()
        self.name = name
        self.transformer = TransformerLayout(encoder.model)
        self.num_layers = encoder.model.config.layers
        self.max_length = 77
        self.layer_norm_hidden_state = encoder.norm_hidden
        self.special_tokens = {"start": 49406, "end": 49407, "pad": encoder.pad_token}
        self.enable_attention_masks = False
        self.zero_out_masked = False
        default = encoder.default_layer
        self.options_default = ("last" if default is None else "hidden", default, True)
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default
        # Stored outside the module's attributes so torch does not walk into the CLIP.
        self.__dict__["_encode"] = encode

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        """``{"layer": idx, "projected_pooled": bool}``: a layer deeper than the model, or None,
        reads the last layer."""
        layer_idx = options.get("layer", self.layer_idx)
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)
        if layer_idx is None or abs(layer_idx) > self.num_layers:
            self.layer = "last"
        else:
            self.layer, self.layer_idx = "hidden", int(layer_idx)

    def reset_clip_options(self) -> None:
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default

    def clip_layer(self, layer_idx: int) -> None:
        """The older form of ``set_clip_options({"layer": layer_idx})``."""
        self.set_clip_options({"layer": layer_idx})

    def reset_clip_layer(self) -> None:
        self.reset_clip_options()

    def _layer(self) -> int | None:
        return self.layer_idx if self.layer == "hidden" else None

    def encode_token_weights(self, token_weight_pairs: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond [1, 77 * chunks, width], pooled [1, dim])`` for chunks of ``(token, weight[, id])``;
        weights move each token's output from the empty prompt's, as CLIPTextEncode does."""
        chunks = [[tuple(t) if isinstance(t, Sequence) else (t, 1.0) for t in chunk] for chunk in token_weight_pairs]
        if not chunks:
            raise ValueError("encode_token_weights needs at least one chunk of tokens")
        return self.__dict__["_encode"](self.name, self._layer(), chunks, bool(self.return_projected_pooled))

    def encode(self, tokens: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of token ids (or ``(token, weight)`` pairs), all at weight 1 unless given."""
        return self.encode_token_weights([[t if isinstance(t, tuple) else (t, 1.0) for t in row] for row in tokens])

    def forward(self, tokens: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(tokens)


class ClipSet(nn.Module):
    """A CLIP's ``cond_stage_model``: its encoders as ``clip_l`` / ``clip_h`` / ``clip_g``.

    ``encode_token_weights`` takes the tokens dict (``{"l": chunks, "g": chunks}``): SDXL's
    joins CLIP-L and bigG on the feature axis (cut to the shorter) and pools from bigG; a single
    encoder's is that encoder's. ``family`` says which reference class this stands for.
    """

    def __init__(self, family: str, members: Mapping[str, ClipMember]) -> None:
        super().__init__()
        self.family = family
        self.names = tuple(members)
        for name, member in members.items():
            setattr(self, member_attr(name), member)
        if len(self.names) == 1:
            # The reference's one-encoder sets name theirs: clip_name "l", clip "clip_l".
            self.clip_name = self.names[0]
            self.clip = member_attr(self.clip_name)

    def members(self) -> list[ClipMember]:
        return [getattr(self, member_attr(name)) for name in self.names]

    @property
    def models(self) -> dict[str, nn.Module]:
        """The networks by encoder name (what the LoRA key maps walk, like ``CLIP.models``)."""
        return {member.name: member.transformer.text_model for member in self.members()}

    @property
    def dtypes(self) -> set[torch.dtype]:
        return {member.dtype for member in self.members()}

    @property
    def device(self) -> torch.device:
        """Where the networks are now (the model manager moves them to the compute device to run)."""
        return self.members()[0].transformer.get_input_embeddings().weight.device

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        for member in self.members():
            member.set_clip_options(options)

    def reset_clip_options(self) -> None:
        for member in self.members():
            member.reset_clip_options()

    def clip_layer(self, layer_idx: int) -> None:
        for member in self.members():
            member.clip_layer(layer_idx)

    def reset_clip_layer(self) -> None:
        self.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [name for name in self.names if name not in token_weight_pairs]
        if missing:
            raise ValueError(f"tokens for this text encoder need chunks under {list(self.names)}; missing {missing}")
        if set(self.names) == {"l", "g"}:
            g_out, g_pooled = self.clip_g.encode_token_weights(token_weight_pairs["g"])
            l_out, _ = self.clip_l.encode_token_weights(token_weight_pairs["l"])
            cut = min(l_out.shape[1], g_out.shape[1])
            return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), g_pooled
        (member,) = self.members()
        return member.encode_token_weights(token_weight_pairs[member.name])

    def forward(self, token_weight_pairs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_token_weights(token_weight_pairs)


# The reference's class names per family: packs read ``type(cond_stage_model).__name__`` (smZNodes
# looks for "SDXL" in it) as well as testing isinstance against comfy.sd1_clip / sdxl_clip.
class SD1ClipModel(ClipSet):
    """SD1's CLIP-L."""


class SD2ClipModel(ClipSet):
    """SD2's OpenCLIP-H."""


class SDXLClipModel(ClipSet):
    """SDXL's CLIP-L + OpenCLIP bigG."""


class SDXLRefinerClipModel(ClipSet):
    """The SDXL refiner's bigG."""


FAMILY_CLASSES: dict[str, type[ClipSet]] = {
    "sd1": SD1ClipModel,
    "sd2": SD2ClipModel,
    "sdxl": SDXLClipModel,
    "sdxl_refiner": SDXLRefinerClipModel,
}


def clip_set(family: str, members: Mapping[str, ClipMember]) -> ClipSet:
    """The ``cond_stage_model`` for a family's encoders, under the reference's class name."""
    return FAMILY_CLASSES.get(family, ClipSet)(family, members)


def is_built_clip_set(obj: Any) -> bool:
    """Whether ``obj`` is a set :func:`clip_set` built (not a pack's subclass or own module)."""
    return type(obj) is ClipSet or type(obj) in FAMILY_CLASSES.values()


class TokenizerSet:
    """A CLIP's ``tokenizer``: its encoders' tokenizers as ``clip_l`` / ``clip_h`` / ``clip_g``;
    ``tokenize_with_weights`` gives ``{name: chunks}`` like ``CLIP.tokenize``."""

    def __init__(self, tokenizers: Mapping[str, PromptTokenizer]) -> None:
        self.names = tuple(tokenizers)
        for name, tokenizer in tokenizers.items():
            setattr(self, member_attr(name), tokenizer)
        if len(self.names) == 1:
            self.clip_name = self.names[0]
            self.clip = member_attr(self.clip_name)

    def _member(self, name: str) -> PromptTokenizer:
        tokenizer: PromptTokenizer = getattr(self, member_attr(name))
        return tokenizer

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Chunks]:
        return {name: self._member(name).tokenize_with_weights(text, return_word_ids) for name in self.names}

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
        # The reference's dual tokenizer answers with bigG's vocabulary (the same as CLIP-L's).
        name = "g" if "g" in self.names else self.names[0]
        return self._member(name).untokenize(token_weight_pair)

    def state_dict(self) -> dict[str, Any]:
        return {}
