"""``comfy.sd1_clip``: prompt weighting, textual inversions, and the CLIP-L tokenizer / encoder.

The prompt-syntax helpers (``parse_parentheses``, ``token_weights``, ``escape_important``,
``unescape_important``) behave exactly like the reference's, which is also how the core nodes
weigh prompts. The tokenizer classes wrap the core nodes' CLIP tokenizer, so a pack's
``SD1Tokenizer().tokenize_with_weights(text)`` gives the same chunks CLIPTextEncode uses. The
encoder classes run the core nodes' CLIP text transformer; they can be built empty (random
weights until ``load_sd``) like the reference's, or around a loaded model's encoders and
tokenizers (:func:`wrap_text_encoders`, :func:`wrap_tokenizers`) so they reuse its weights,
padding and textual inversions: what a CLIP's ``cond_stage_model`` / ``tokenizer`` should be.

``isinstance(x, SD1ClipModel)`` (and the SDXL classes in :mod:`comfy.sdxl_clip`) also holds for
the core nodes' text-encoder stacks of the matching family, because packs test a CLIP's
``cond_stage_model`` that way to pick their encoding path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plugins.core_nodes.models import clip as core_clip
from plugins.core_nodes.models import clip_objects as core_objects
from plugins.core_nodes.models import text_encoder as core_te
from plugins.core_nodes.models import tokenizer as _tokenizer
from plugins.core_nodes.models import tokenizer as core_tok

log = logging.getLogger("comfykernel.compat")

TokenChunks = list[list[tuple[Any, ...]]]


# --- prompt syntax -------------------------------------------------------------------------


# The core tokenizer's parser, under the reference's names (one implementation of the syntax).
parse_parentheses = _tokenizer.split_parentheses
token_weights = _tokenizer.weigh
escape_important = _tokenizer.escape_important
unescape_important = _tokenizer.unescape_important


# --- textual inversions --------------------------------------------------------------------


def expand_directory_list(directories: Iterable[str]) -> list[str]:
    """The directories and every directory below them (symlinks followed)."""
    found: set[str] = set()
    for directory in directories:
        found.add(directory)
        for root, _dirs, _files in os.walk(directory, followlinks=True):
            found.add(root)
    return list(found)


def _embedding_file(name: str, directories: Sequence[str]) -> str | None:
    for directory in expand_directory_list(directories):
        base = os.path.abspath(directory)
        path = os.path.abspath(os.path.join(base, name))
        try:
            if os.path.commonpath((base, path)) != base:
                continue  # "../" in a prompt must not reach outside the embeddings folders
        except ValueError:
            continue
        if os.path.isfile(path):
            return path
        for ext in (".safetensors", ".pt", ".bin"):
            if os.path.isfile(path + ext):
                return path + ext
    return None


def safe_load_embed_zip(embed_path: str) -> torch.Tensor | None:
    """Vectors from an old zipped ``.pt`` embedding, read as raw float32 data without unpickling.

    Only the archive's ``data/`` records are read, last first; one whose float count is a
    multiple of 768 is SD1 (768 wide), anything else of 768 floats or more SD2 (1024 wide).
    """
    import zipfile

    with zipfile.ZipFile(embed_path) as archive:
        for name in reversed([n for n in archive.namelist() if "data/" in n]):
            data = archive.read(name)
            count = len(data) // 4
            if count < 768:
                continue
            width = 768 if count % 768 == 0 else 1024
            return torch.frombuffer(bytearray(data), dtype=torch.float).reshape(count // width, width).clone()
    return None


def load_embed(
    embedding_name: str,
    embedding_directory: str | Sequence[str] | None,
    embedding_size: int,
    embed_key: str | None = None,
) -> torch.Tensor | None:
    """The ``[n, embedding_size]`` vectors of the textual inversion ``embedding_name`` found in
    ``embedding_directory`` (a folder or a list; sub-folders count), or None."""
    if not embedding_directory:
        return None
    directories = (
        [embedding_directory] if isinstance(embedding_directory, str | Path) else list(embedding_directory)
    )
    path = _embedding_file(embedding_name, [str(d) for d in directories])
    if path is None:
        return None
    try:
        return core_te.read_embedding(path, embed_key or "", embedding_size)
    except Exception as e:  # noqa: BLE001 - a bad file is skipped with a warning, as in the reference
        log.warning("error loading embedding, skipping loading %s: %s", embedding_name, e)
        return None


# --- tokenizers ----------------------------------------------------------------------------


class SDTokenizer:
    """A CLIP BPE tokenizer producing 77-token chunks of ``(token, weight)`` pairs.

    Embeddings named in the prompt (``embedding:name``) are looked up in ``embedding_directory``.
    """

    def __init__(
        self,
        tokenizer_path: str | None = None,
        max_length: int = 77,
        pad_with_end: bool = True,
        embedding_directory: str | Sequence[str] | None = None,
        embedding_size: int = 768,
        embedding_key: str = "clip_l",
        tokenizer_class: Any = None,
        has_start_token: bool = True,
        has_end_token: bool = True,
        pad_to_max_length: bool = True,
        min_length: int | None = None,
        pad_token: int | None = None,
        end_token: int | None = None,
        start_token: int | None = None,
        min_padding: int | None = None,
        pad_left: bool = False,
        disable_weights: bool = False,
        tokenizer_data: Mapping[str, Any] | None = None,
        tokenizer_args: Mapping[str, Any] | None = None,
        *,
        prompt_tokenizer: core_tok.PromptTokenizer | None = None,
    ) -> None:
        if prompt_tokenizer is not None:
            # Around a loaded model's tokenizer: its token ids, padding and embedding lookup.
            start_token, end_token = prompt_tokenizer.start_token, prompt_tokenizer.end_token
            pad_token, max_length = prompt_tokenizer.pad_token, prompt_tokenizer.max_length
            embedding_size, embedding_key = prompt_tokenizer.embedding_size, prompt_tokenizer.embedding_key
        self.max_length = max_length
        self.min_length = min_length
        self.min_padding = min_padding
        self.pad_left = pad_left
        self.pad_to_max_length = pad_to_max_length
        self.has_start_token = has_start_token
        self.has_end_token = has_end_token
        self.disable_weights = disable_weights
        self.start_token = core_tok.START_TOKEN if start_token is None else start_token
        self.end_token = core_tok.END_TOKEN if end_token is None else end_token
        self.pad_with_end = pad_with_end
        self.pad_token = pad_token if pad_token is not None else (self.end_token if pad_with_end else 0)
        self.tokens_start = 1 if has_start_token else 0
        self.embedding_directory = embedding_directory
        self.embedding_size = embedding_size
        self.embedding_key = embedding_key
        self.embedding_identifier = "embedding:"
        self.bpe = prompt_tokenizer.bpe if prompt_tokenizer is not None else core_tok.default_bpe()
        self.inv_vocab = {v: k for k, v in self.bpe.vocab.items()}
        self._prompt = prompt_tokenizer or core_tok.PromptTokenizer(
            self.bpe,
            max_length=max_length,
            start_token=self.start_token,
            end_token=self.end_token,
            pad_token=self.pad_token,
            embedding_key=embedding_key,
            embedding_size=embedding_size,
            embeddings=self._lookup if embedding_directory else None,
        )

    def _lookup(self, name: str, key: str, size: int) -> torch.Tensor | None:
        return load_embed(name, self.embedding_directory, size, key)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> TokenChunks:
        """Chunks of ``max_length`` ``(token, weight)`` pairs (``(token, weight, word_id)`` with
        ``return_word_ids``); embeddings appear as vectors in place of token ids."""
        chunks = self._prompt.tokenize_with_weights(text, return_word_ids=return_word_ids)
        if self.disable_weights:
            chunks = [[(t[0], 1.0, *t[2:]) for t in chunk] for chunk in chunks]
        return chunks

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
        """Each pair with its vocabulary entry: ``((token, weight), "word</w>")``."""
        return [
            (pair, self.inv_vocab.get(pair[0], "") if isinstance(pair[0], int) else "")
            for pair in token_weight_pair
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}


class SD1Tokenizer:
    """The SD1 tokenizer set: one :class:`SDTokenizer` under ``clip_name`` (``"l"``)."""

    def __init__(
        self,
        embedding_directory: str | Sequence[str] | None = None,
        tokenizer_data: Mapping[str, Any] | None = None,
        clip_name: str = "l",
        tokenizer: type = SDTokenizer,
        name: str | None = None,
    ) -> None:
        self.clip_name = name if name is not None else clip_name
        self.clip = f"clip_{self.clip_name}"
        self.tokenizer_data = dict(tokenizer_data or {})
        setattr(
            self,
            self.clip,
            tokenizer(embedding_directory=embedding_directory, tokenizer_data=self.tokenizer_data),
        )

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> dict[str, TokenChunks]:
        return {
            self.clip_name: getattr(self, self.clip).tokenize_with_weights(text, return_word_ids, **kwargs)
        }

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> Any:
        return getattr(self, self.clip).untokenize(token_weight_pair)

    def state_dict(self) -> dict[str, Any]:
        return getattr(self, self.clip).state_dict()


# --- encoders ------------------------------------------------------------------------------


class _StackFamily(type):
    """Lets ``isinstance(core_stack, cls)`` hold for the core nodes' text-encoder stacks whose
    family is in ``cls.stack_families`` (see the module docstring)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        # A CLIP's cond_stage_model (core ClipSet) stands for the reference class of its family.
        if not isinstance(obj, core_te.TextEncoderStack | core_objects.ClipSet):
            return False
        # A subclass's families count too: the refiner's model is an SD1ClipModel in the reference.
        pending, families = [cls], set()
        while pending:
            klass = pending.pop()
            families.update(getattr(klass, "stack_families", ()))
            pending.extend(klass.__subclasses__())
        return obj.family in families


def gen_empty_tokens(special_tokens: Mapping[str, int | None], length: int) -> list[int]:
    """The empty prompt's row of ``length`` ids: start and end token (those the encoder has),
    then its pad token."""
    row = [special_tokens[k] for k in ("start", "end") if special_tokens.get(k) is not None]
    return [int(t) for t in row] + [int(special_tokens["pad"])] * (length - len(row))  # type: ignore[arg-type]


class ClipTokenWeightEncoder:
    """``encode_token_weights(chunks)``: encode chunks, applying each token's weight by moving
    its output away from the empty prompt's (``empty + (z - empty) * weight``)."""

    def encode_token_weights(self, token_weight_pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encoder().encode([[tuple(t) for t in chunk] for chunk in token_weight_pairs])  # type: ignore[attr-defined]


def _config_from_json(
    config: Mapping[str, Any] | core_clip.ClipTextConfig | None,
) -> core_clip.ClipTextConfig:
    if isinstance(config, core_clip.ClipTextConfig):
        return config
    if not config:
        return core_clip.CLIP_L
    return core_clip.ClipTextConfig(
        width=config.get("hidden_size", 768),
        layers=config.get("num_hidden_layers", 12),
        heads=config.get("num_attention_heads", 12),
        mlp_width=config.get("intermediate_size", 3072),
        vocab_size=config.get("vocab_size", 49408),
        max_positions=config.get("max_position_embeddings", 77),
        activation="gelu" if config.get("hidden_act") == "gelu" else "quick_gelu",
        projection_dim=config.get("projection_dim"),
        eos_token=config.get("eos_token_id", core_tok.END_TOKEN),
    )


class SDClipModel(torch.nn.Module, ClipTokenWeightEncoder, metaclass=_StackFamily):
    """One CLIP text transformer read at ``layer`` (``"last"``, ``"pooled"`` or ``"hidden"`` with
    ``layer_idx``), the way SD1 uses CLIP-L. ``transformer`` is the reference's layout
    (``transformer.text_model.embeddings.token_embedding``...); calling the model with rows of
    token ids is the reference's ``forward``: unweighted ``(z, pooled)``."""

    stack_families: tuple[str, ...] = ()
    LAYERS = ("last", "pooled", "hidden", "all")

    def __init__(
        self,
        device: Any = "cpu",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        layer_idx: int | None = None,
        textmodel_json_config: Mapping[str, Any] | core_clip.ClipTextConfig | str | None = None,
        dtype: torch.dtype | None = None,
        model_class: Any = None,
        special_tokens: Mapping[str, int] | None = None,
        layer_norm_hidden_state: bool = True,
        enable_attention_masks: bool = False,
        zero_out_masked: bool = False,
        return_projected_pooled: bool = True,
        return_attention_masks: bool = False,
        model_options: Mapping[str, Any] | None = None,
        *,
        encoder: core_te.ClipEncoder | None = None,
    ) -> None:
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, not {layer!r}")
        if isinstance(textmodel_json_config, str):
            import json

            with open(textmodel_json_config) as f:
                textmodel_json_config = json.load(f)
        self.max_length = max_length
        self.special_tokens = dict(
            special_tokens
            or {"start": core_tok.START_TOKEN, "end": core_tok.END_TOKEN, "pad": core_tok.END_TOKEN}
        )
        self.layer_norm_hidden_state = layer_norm_hidden_state
        self.return_projected_pooled = return_projected_pooled
        if encoder is None:
            model = core_clip.ClipTextModel(_config_from_json(textmodel_json_config))
            if dtype is not None:
                model.to(dtype)
            encoder = core_te.ClipEncoder(
                model=model,
                default_layer=None,
                norm_hidden=layer_norm_hidden_state,
                pad_token=self.special_tokens.get("pad", core_tok.END_TOKEN),
            )
        self.enable_attention_masks = enable_attention_masks
        self.zero_out_masked = zero_out_masked
        self.return_attention_masks = return_attention_masks
        self.execution_device: Any = None
        self.encoder = encoder
        self.transformer = core_objects.TransformerLayout(encoder.model)
        self.num_layers = encoder.model.config.layers
        self.layer = layer
        self.layer_idx = layer_idx
        self.options_default = (layer, layer_idx, return_projected_pooled)
        self._apply_layer()
        if freeze:
            self.freeze()

    def _encoder(self) -> core_te.ClipEncoder:
        """The encoder at this model's options (its layer, projected or not pooled output)."""
        view = dataclasses.replace(self.encoder, project_pooled=bool(self.return_projected_pooled))
        view.set_layer(self.encoder.layer)
        return view

    def _apply_layer(self) -> None:
        self.encoder.set_layer(self.layer_idx if self.layer == "hidden" else None)

    def freeze(self) -> None:
        self.transformer.eval()
        for param in self.parameters():
            param.requires_grad = False

    def clip_layer(self, layer_idx: int) -> None:
        """Read the output of layer ``layer_idx`` (negative: from the end) instead of the last."""
        if abs(layer_idx) > self.num_layers:
            self.layer = "last"
        else:
            self.layer, self.layer_idx = "hidden", layer_idx
        self._apply_layer()

    def reset_clip_layer(self) -> None:
        self.layer, self.layer_idx, self.return_projected_pooled = self.options_default
        self._apply_layer()

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        """``{"layer": idx, "projected_pooled": bool, "execution_device": device}``; a layer
        deeper than the model, or None, reads the last layer."""
        layer_idx = options.get("layer", self.layer_idx)
        if layer_idx is None:
            self.layer = "last"
            self._apply_layer()
        else:
            self.clip_layer(layer_idx)
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)
        self.execution_device = options.get("execution_device", self.execution_device)

    def reset_clip_options(self) -> None:
        self.reset_clip_layer()
        self.execution_device = None

    def forward(self, tokens: Sequence[Sequence[Any]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of token ids (embedding vectors may stand among them) -> ``(z [rows, tokens,
        width], pooled [rows, dim])`` at this model's options, unweighted, float32."""
        return self._encoder().forward_rows(tokens)

    def encode(self, tokens: Sequence[Sequence[Any]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self(tokens)
        return result

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        """Load CLIP weights in the transformers layout (``text_model.`` prefix optional)."""
        stripped = {k.removeprefix("text_model."): v for k, v in sd.items()}
        return self.transformer.text_model.load_state_dict(stripped, strict=False)


class SD1CheckpointClipModel(SDClipModel):
    pass


class SD1ClipModel(torch.nn.Module, metaclass=_StackFamily):
    """The SD1 text-encoder set: one :class:`SDClipModel` under ``clip_name`` (``"l"``)."""

    stack_families = ("sd1", "sd2")

    def __init__(
        self,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
        clip_name: str = "l",
        clip_model: type = SD1CheckpointClipModel,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.clip_name = name if name is not None else clip_name
        self.clip = f"clip_{self.clip_name}"
        setattr(
            self, self.clip, clip_model(device=device, dtype=dtype, model_options=model_options, **kwargs)
        )
        self.dtypes = {dtype}

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        getattr(self, self.clip).set_clip_options(options)

    def reset_clip_options(self) -> None:
        getattr(self, self.clip).reset_clip_options()

    def encode_token_weights(
        self, token_weight_pairs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, self.clip).encode_token_weights(token_weight_pairs[self.clip_name])

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        return getattr(self, self.clip).load_sd(sd)


def wrap_tokenizers(stack: core_te.TextEncoderStack) -> Any:
    """The reference-style ``clip.tokenizer`` for a loaded model: an ``SD1Tokenizer`` (SD1/SD2)
    or ``SDXLTokenizer`` whose tokenizers are the model's own (same padding and embeddings)."""
    import comfy.sdxl_clip

    def member(name: str) -> SDTokenizer:
        return SDTokenizer(prompt_tokenizer=stack.tokenizers[name])

    if set(stack.tokenizers) == {"l", "g"}:
        wrapped = comfy.sdxl_clip.SDXLTokenizer.__new__(comfy.sdxl_clip.SDXLTokenizer)
        wrapped.clip_l, wrapped.clip_g = member("l"), member("g")
        return wrapped
    (name,) = stack.tokenizers
    single = SD1Tokenizer.__new__(SD1Tokenizer)
    single.clip_name, single.clip, single.tokenizer_data = name, f"clip_{name}", {}
    setattr(single, single.clip, member(name))
    return single


def wrap_text_encoders(stack: core_te.TextEncoderStack) -> torch.nn.Module:
    """The reference-style ``cond_stage_model`` for a loaded model's text encoders: an
    ``SD1ClipModel`` (SD1/SD2), ``SDXLClipModel`` or ``SDXLRefinerClipModel`` sharing its weights."""
    import comfy.sdxl_clip

    def member(name: str, **kwargs: Any) -> SDClipModel:
        return SDClipModel(encoder=stack.encoders[name], freeze=False, **kwargs)

    if stack.family == "sdxl":
        return comfy.sdxl_clip.SDXLClipModel(clip_l=member("l"), clip_g=member("g"))
    if stack.family == "sdxl_refiner":
        return comfy.sdxl_clip.SDXLRefinerClipModel(clip_g=member("g"))
    (name,) = stack.encoders
    model = SD1ClipModel.__new__(SD1ClipModel)
    torch.nn.Module.__init__(model)
    model.clip_name, model.clip = name, f"clip_{name}"
    setattr(model, model.clip, member(name))
    model.dtypes = {None}
    return model
