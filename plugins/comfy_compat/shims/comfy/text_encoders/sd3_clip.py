"""``comfy.text_encoders.sd3_clip``: SD3's text-encoder trio (CLIP-L, bigG, T5-XXL).

The CLIP parts are real (see :mod:`comfy.sd1_clip`); T5-XXL is not provided by this server, so
its classes import and construct their configuration, but building a T5 model or tokenizing
with it raises ``NotImplementedError`` with a message naming it. ``SD3ClipModel(t5=False)``
works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import comfy.model_management
import torch
from comfy import sd1_clip, sdxl_clip

_NO_T5 = "T5-XXL text encoders are not supported by comfykernel"


class T5XXLModel(sd1_clip.SDClipModel):
    """Placeholder for the T5-XXL encoder: construction raises ``NotImplementedError``."""

    def __init__(
        self,
        device: Any = "cpu",
        layer: str = "last",
        layer_idx: int | None = None,
        dtype: torch.dtype | None = None,
        attention_mask: bool = False,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError(_NO_T5)


def t5_xxl_detect(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """``{"dtype_t5": dtype}`` when ``state_dict`` holds a T5 encoder under ``prefix``."""
    key = f"{prefix}encoder.final_layer_norm.weight"
    return {"dtype_t5": state_dict[key].dtype} if key in state_dict else {}


class T5XXLTokenizer:
    """T5's sentencepiece tokenizer settings (``min_length`` 77, no start token, 4096-wide
    embeddings); tokenizing raises ``NotImplementedError``."""

    def __init__(
        self,
        embedding_directory: str | Sequence[str] | None = None,
        tokenizer_data: Mapping[str, Any] | None = None,
        min_length: int = 77,
        max_length: int = 99999999,
    ) -> None:
        self.embedding_directory = embedding_directory
        self.min_length = min_length
        self.max_length = max_length
        self.embedding_size = 4096
        self.embedding_key = "t5xxl"
        self.pad_with_end = False
        self.pad_to_max_length = False
        self.tokens_start = 0
        self.end_token = 1
        self.pad_token = 0

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError(_NO_T5)

    def untokenize(self, token_weight_pair: Any) -> Any:
        raise NotImplementedError(_NO_T5)

    def state_dict(self) -> dict[str, Any]:
        return {}


class SD3Tokenizer:
    """CLIP-L, bigG and T5 tokenizers; ``tokenize_with_weights`` gives ``{"g", "l", "t5xxl"}``."""

    def __init__(self, embedding_directory: str | Sequence[str] | None = None, tokenizer_data: Mapping[str, Any] | None = None) -> None:
        self.clip_l = sd1_clip.SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        self.clip_g = sdxl_clip.SDXLClipGTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        self.t5xxl = T5XXLTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Any]:
        return {
            "g": self.clip_g.tokenize_with_weights(text, return_word_ids, **kwargs),
            "l": self.clip_l.tokenize_with_weights(text, return_word_ids, **kwargs),
            "t5xxl": self.t5xxl.tokenize_with_weights(text, return_word_ids, **kwargs),
        }

    def untokenize(self, token_weight_pair: Any) -> Any:
        return self.clip_g.untokenize(token_weight_pair)

    def state_dict(self) -> dict[str, Any]:
        return {}


class SD3ClipModel(torch.nn.Module):
    """Whichever of CLIP-L / bigG / T5 are asked for (absent ones are None)."""

    def __init__(
        self,
        clip_l: bool = True,
        clip_g: bool = True,
        t5: bool = True,
        dtype_t5: torch.dtype | None = None,
        t5_attention_mask: bool = False,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if t5:
            # Before building the CLIPs: fail fast rather than after allocating them.
            raise NotImplementedError(_NO_T5)
        self.dtypes: set[Any] = set()
        self.clip_l = (
            sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                 layer_norm_hidden_state=False, return_projected_pooled=False)
            if clip_l
            else None
        )
        self.clip_g = sdxl_clip.SDXLClipG(device=device, dtype=dtype) if clip_g else None
        self.dtypes.update({dtype} if clip_l or clip_g else set())
        self.t5xxl: Any = None
        self.t5_attention_mask = t5_attention_mask
        self.dtype_t5 = comfy.model_management.pick_weight_dtype(dtype_t5, dtype or torch.float32, device)

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        for part in (self.clip_l, self.clip_g, self.t5xxl):
            if part is not None:
                part.set_clip_options(options)

    def reset_clip_options(self) -> None:
        for part in (self.clip_l, self.clip_g, self.t5xxl):
            if part is not None:
                part.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP-L and bigG side by side, zero-padded to 4096 features, pooled = both pools."""
        if self.clip_l is None or self.clip_g is None or self.t5xxl is not None:
            raise NotImplementedError("SD3 encoding needs CLIP-L and bigG and no T5 on comfykernel")
        l_out, l_pooled = self.clip_l.encode_token_weights(token_weight_pairs["l"])
        g_out, g_pooled = self.clip_g.encode_token_weights(token_weight_pairs["g"])
        cut = min(l_out.shape[1], g_out.shape[1])
        lg = torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1)
        lg = torch.nn.functional.pad(lg, (0, 4096 - lg.shape[-1]))
        return lg, torch.cat((l_pooled, g_pooled), dim=-1)

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        if "text_model.encoder.layers.30.mlp.fc1.weight" in sd and self.clip_g is not None:
            return self.clip_g.load_sd(sd)
        if "text_model.encoder.layers.1.mlp.fc1.weight" in sd and self.clip_l is not None:
            return self.clip_l.load_sd(sd)
        raise NotImplementedError(_NO_T5)


def sd3_clip(
    clip_l: bool = True,
    clip_g: bool = True,
    t5: bool = True,
    dtype_t5: torch.dtype | None = None,
    t5_quantization_metadata: Any = None,
    t5_attention_mask: bool = False,
) -> type[SD3ClipModel]:
    """An :class:`SD3ClipModel` subclass with these parts fixed (what the reference's loader builds)."""

    class SD3ClipModel_(SD3ClipModel):  # noqa: N801 - the reference's name
        def __init__(self, device: Any = "cpu", dtype: torch.dtype | None = None, model_options: Mapping[str, Any] | None = None) -> None:
            super().__init__(clip_l=clip_l, clip_g=clip_g, t5=t5, dtype_t5=dtype_t5,
                             t5_attention_mask=t5_attention_mask, device=device, dtype=dtype, model_options=model_options)

    return SD3ClipModel_
