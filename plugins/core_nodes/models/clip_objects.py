"""The reference's objects behind a CLIP value: its ``cond_stage_model`` and its ``tokenizer``.

Packs that build conditioning themselves (ADV_CLIP_emb, Easy-Use, smZ...) reach past the CLIP's
methods into these: ``clip.cond_stage_model.clip_l.encode_token_weights(chunks)``,
``clip.cond_stage_model.set_clip_options({"layer": -2})``, ``clip.tokenizer.clip_g...``. The
layout is the reference's: a set module (``SD1ClipModel`` / ``SD2ClipModel`` / ``SDXLClipModel``
/ ``SDXLRefinerClipModel`` there) holding one member per encoder under ``clip_l`` / ``clip_h`` /
``clip_g``, each with a ``transformer`` whose ``text_model`` is the network, so the set's state-dict
keys are the reference's (``clip_l.transformer.text_model.encoder.layers.0...``) and weight patches
written for the reference (``clip.add_patches``) find their weights.

The members run their network through their CLIP (the ``run`` callable they are built with),
so its weight patches apply per call and the cached network is never written; each member keeps
the reference's clip options (``layer`` ``"last"`` / ``"hidden"`` with ``layer_idx``), which
``encode_token_weights`` and ``forward`` read. ``forward(tokens)`` is the reference's
``SDClipModel.forward``: rows of token ids (embedding vectors among them), embedded through
``transformer.text_model.embeddings.token_embedding`` as it is at call time (one row per call,
``out_dtype=float32``), unweighted ``(z, pooled)`` back. Packs that run their own prompt engine
on a member (smZNodes wraps the token embedding, replaces ``encode_token_weights`` and calls the
member with token rows) get the reference's answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

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
    "SD3ClipModel",
    "SDXLClipModel",
    "SDXLRefinerClipModel",
    "TokenizerSet",
    "TransformerLayout",
    "clip_set",
    "is_built_clip_set",
    "member_attr",
    "replaces_encoding",
    "split_key",
]

_T = TypeVar("_T")
# run(encoder name, layer or None for the last normed one, projected pooled, work) -> work's
# answer for the encoder seen through the CLIP's weight patches, on the device it runs on.
MemberRun = Callable[[str, int | None, bool, Callable[[ClipEncoder], _T]], _T]

_TEXT_MODEL = ".transformer.text_model."
_PROJECTION = ".transformer.text_projection."


def member_attr(name: str) -> str:
    """The reference's attribute for encoder ``name``: ``l`` -> ``clip_l``; T5 members keep
    their name (``t5xxl``)."""
    return name if name.startswith("t5") else f"clip_{name}"


def split_key(key: str) -> tuple[str, str] | None:
    """A reference state-dict key of a CLIP's ``cond_stage_model`` -> (encoder name, our
    parameter name), or None. The reference keeps ``text_projection`` beside ``text_model``;
    ours sits inside the network, so both spellings name it. T5 members (``t5xxl``) are named
    as they are (see :func:`member_attr`)."""
    member, _, rest = key.partition(".")
    if member.startswith("t5"):
        name = member
    elif member.startswith("clip_"):
        name = member[len("clip_") :]
    else:
        return None
    dotted = "." + rest
    if dotted.startswith(_TEXT_MODEL):
        return name, dotted[len(_TEXT_MODEL) :]
    if dotted.startswith(_PROJECTION):
        return name, "text_projection." + dotted[len(_PROJECTION) :]
    return None


class TransformerLayout(nn.Module):
    """A member's ``transformer``: the network as ``text_model`` (the reference's nesting), and
    the reference's ``CLIPTextModel`` call (see :meth:`forward`)."""

    def __init__(self, model: ClipTextModel) -> None:
        super().__init__()
        self.text_model = model
        self.num_layers = model.config.layers

    @property
    def text_projection(self) -> nn.Module:
        """The pooled output's projection; CLIP-L, which has none, answers the identity the
        reference loads for it. A property, not a child: registering it twice would list its
        weight under two keys."""
        projection = self.text_model.text_projection
        if projection is not None:
            return projection
        weight = self.get_input_embeddings().weight
        identity: nn.Linear | None = self.__dict__.get("_identity")
        if identity is None or identity.weight.device != weight.device or identity.weight.dtype != weight.dtype:
            width = self.text_model.config.width
            identity = nn.Linear(width, width, bias=False, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                identity.weight.copy_(torch.eye(width))
            identity.requires_grad_(False)
            self.__dict__["_identity"] = identity  # outside the module tree: no state-dict key
        return identity

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.embeddings.token_embedding.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.text_model.embeddings.token_embedding = embeddings

    @torch.no_grad()
    def forward(
        self,
        input_tokens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        num_tokens: Sequence[int] | None = None,
        intermediate_output: int | None = None,
        final_layer_norm_intermediate: bool = True,
        dtype: torch.dtype = torch.float32,
        embeds_info: Sequence[Any] = (),
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The reference's ``CLIPTextModel`` call on this network (without any CLIP's patches):
        ``(last layer normed, layer intermediate_output or None, projected pooled, pooled)``,
        in ``dtype``. ``embeds`` [batch, tokens, width] stand in for the token embeddings of
        ``input_tokens``; the pooled state is at ``num_tokens - 1`` when given, else at each
        row's first end token. Only causal attention: a mask that hides tokens is refused."""
        if attention_mask is not None and not bool((attention_mask != 0).all()):
            raise ValueError("this CLIP text encoder attends causally only: attention masks are not supported")
        if intermediate_output is not None and not isinstance(intermediate_output, int):
            raise ValueError(f"intermediate_output must be a layer index, not {intermediate_output!r}")
        if input_tokens is None and embeds is None:
            raise ValueError("give input_tokens or embeds")
        if input_tokens is not None:
            ids = input_tokens.round().long() if input_tokens.is_floating_point() else input_tokens.long()
        else:
            assert embeds is not None
            # No ids: no end token to find, so the pooled state is the last one unless num_tokens says.
            ids = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        out = self.text_model(
            ids, embeds=embeds, hidden_layer=intermediate_output, norm_hidden=final_layer_norm_intermediate
        )
        pooled = out.unprojected
        if num_tokens is not None:
            rows = torch.arange(out.last.shape[0], device=out.last.device)
            pooled = out.last[rows, torch.tensor([n - 1 for n in num_tokens], device=out.last.device)]
        assert pooled is not None
        hidden = None if out.hidden is None else out.hidden.to(dtype)
        return out.last.to(dtype), hidden, self.text_projection(pooled).to(dtype), pooled.to(dtype)


class ClipMember(nn.Module):
    """One encoder as the reference's ``SDClipModel``: ``transformer``, clip options,
    ``forward(token rows) -> (z, pooled)`` and ``encode_token_weights(chunks) -> (cond,
    pooled)``, both through its CLIP's weight patches."""

    def __init__(self, name: str, encoder: ClipEncoder, run: MemberRun[Any]) -> None:
        super().__init__()
        self.name = name
        self.transformer = TransformerLayout(encoder.model)
        self.num_layers = encoder.model.config.layers
        self.max_length = 77
        self.layer_norm_hidden_state = encoder.norm_hidden
        self.special_tokens = {"start": 49406, "end": 49407, "pad": encoder.pad_token}
        # The reference's switches for encoders that mask padding (T5...); off for CLIP, as there.
        self.enable_attention_masks = False
        self.zero_out_masked = False
        self.return_attention_masks = False
        # Where the reference runs the encoder when set; here the model manager places it.
        self.execution_device: torch.device | None = None
        default = encoder.default_layer
        self.options_default = ("last" if default is None else "hidden", default, True)
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default
        # Stored outside the module's attributes so torch does not walk into the CLIP.
        self.__dict__["_run"] = run

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        """``{"layer": idx, "projected_pooled": bool, "execution_device": device}``: a layer
        deeper than the model, or None, reads the last layer."""
        layer_idx = options.get("layer", self.layer_idx)
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)
        self.execution_device = options.get("execution_device", self.execution_device)
        if layer_idx is None or abs(layer_idx) > self.num_layers:
            self.layer = "last"
        else:
            self.layer, self.layer_idx = "hidden", int(layer_idx)

    def reset_clip_options(self) -> None:
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default
        self.execution_device = None

    def freeze(self) -> None:
        """The reference's: evaluation mode, no gradients (the shared networks already are)."""
        self.transformer.eval()
        for param in self.parameters():
            param.requires_grad = False

    def clip_layer(self, layer_idx: int) -> None:
        """The older form of ``set_clip_options({"layer": layer_idx})``."""
        self.set_clip_options({"layer": layer_idx})

    def reset_clip_layer(self) -> None:
        self.reset_clip_options()

    def _layer(self) -> int | None:
        return self.layer_idx if self.layer == "hidden" else None

    def _on_cpu(self, work: Callable[[ClipEncoder], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        run: MemberRun[tuple[torch.Tensor, torch.Tensor]] = self.__dict__["_run"]
        cond, pooled = run(self.name, self._layer(), bool(self.return_projected_pooled), work)
        # T5 members have no pooled output (None, as the reference's).
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    def encode_token_weights(self, token_weight_pairs: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond [1, 77 * chunks, width], pooled [1, dim])`` for chunks of ``(token, weight[, id])``;
        weights move each token's output from the empty prompt's, as CLIPTextEncode does."""
        chunks = [[tuple(t) if isinstance(t, Sequence) else (t, 1.0) for t in chunk] for chunk in token_weight_pairs]
        if not chunks:
            raise ValueError("encode_token_weights needs at least one chunk of tokens")
        return self._on_cpu(lambda encoder: encoder.encode(chunks))

    def forward(self, tokens: Sequence[Sequence[Any]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's ``SDClipModel.forward``: rows of token ids (a list of lists or an
        integer tensor; embedding vectors may stand among the ids) -> ``(z [rows, tokens,
        width], pooled [rows, dim])`` at this member's clip options, unweighted, float32."""
        if len(tokens) == 0:
            raise ValueError("no token rows to encode")
        return self._on_cpu(lambda encoder: encoder.forward_rows(tokens))

    def encode(self, tokens: Sequence[Sequence[Any]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's name for calling the member: :meth:`forward`."""
        result: tuple[torch.Tensor, torch.Tensor] = self(tokens)
        return result


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
        if self.family == "sd3":
            return self._encode_sd3(token_weight_pairs)
        if set(self.names) == {"l", "g"}:
            g_out, g_pooled = self.clip_g.encode_token_weights(token_weight_pairs["g"])
            l_out, _ = self.clip_l.encode_token_weights(token_weight_pairs["l"])
            cut = min(l_out.shape[1], g_out.shape[1])
            return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), g_pooled
        (member,) = self.members()
        return member.encode_token_weights(token_weight_pairs[member.name])

    def forward(self, token_weight_pairs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_token_weights(token_weight_pairs)

    def _encode_sd3(self, tokens: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """SD3's join of its encoders (:func:`~.sd3_text.encode_sd3`), each at its clip options."""
        from plugins.core_nodes.models.sd3_text import encode_chunks, encode_sd3

        def encode(name: str, chunks: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
            member: ClipMember = getattr(self, member_attr(name))
            run = member.__dict__["_run"]
            rows = [[tuple(t) if isinstance(t, Sequence) else (t, 1.0) for t in chunk] for chunk in chunks]
            projected = bool(member.return_projected_pooled)
            cond, pooled = run(name, member._layer(), projected, lambda e: encode_chunks(e, rows))
            return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

        return encode_sd3(tokens, self.names, encode)


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


class SD3ClipModel(ClipSet):
    """SD3's CLIP-L, bigG and T5-XXL (any may be missing), as ``clip_l`` / ``clip_g`` / ``t5xxl``."""


FAMILY_CLASSES: dict[str, type[ClipSet]] = {
    "sd1": SD1ClipModel,
    "sd2": SD2ClipModel,
    "sdxl": SDXLClipModel,
    "sdxl_refiner": SDXLRefinerClipModel,
    "sd3": SD3ClipModel,
}


def clip_set(family: str, members: Mapping[str, ClipMember]) -> ClipSet:
    """The ``cond_stage_model`` for a family's encoders, under the reference's class name."""
    return FAMILY_CLASSES.get(family, ClipSet)(family, members)


def is_built_clip_set(obj: Any) -> bool:
    """Whether ``obj`` is a set :func:`clip_set` built (not a pack's subclass or own module)."""
    return type(obj) is ClipSet or type(obj) in FAMILY_CLASSES.values()


def replaces_encoding(model: ClipSet) -> bool:
    """Whether a pack put its own ``encode_token_weights`` on the set or on one of its members
    (smZNodes hooks each member while its node encodes): the CLIP must then encode through them."""
    if "encode_token_weights" in vars(model):
        return True
    return any("encode_token_weights" in vars(member) for member in model.members())


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
