"""``comfy.text_encoders.flux``: Flux's CLIP-L + T5-XXL text encoders (importable names).

Flux conditions on T5-XXL, which this server does not provide: constructing
:class:`FluxClipModel` or tokenizing with :class:`FluxTokenizer`'s T5 part raises
``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from comfy import sd1_clip
from comfy.text_encoders.sd3_clip import _NO_T5, T5XXLModel, T5XXLTokenizer

__all__ = ["FluxClipModel", "FluxTokenizer", "T5XXLModel", "T5XXLTokenizer", "flux_clip"]


class FluxTokenizer:
    """CLIP-L and T5 tokenizers; ``tokenize_with_weights`` gives ``{"l", "t5xxl"}``."""

    def __init__(self, embedding_directory: str | Sequence[str] | None = None, tokenizer_data: Mapping[str, Any] | None = None) -> None:
        self.clip_l = sd1_clip.SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        self.t5xxl = T5XXLTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Any]:
        return {
            "l": self.clip_l.tokenize_with_weights(text, return_word_ids, **kwargs),
            "t5xxl": self.t5xxl.tokenize_with_weights(text, return_word_ids, **kwargs),
        }

    def untokenize(self, token_weight_pair: Any) -> Any:
        return self.clip_l.untokenize(token_weight_pair)

    def state_dict(self) -> dict[str, Any]:
        return {}


class FluxClipModel(torch.nn.Module):
    """Placeholder for Flux's encoder pair: construction raises ``NotImplementedError``."""

    def __init__(self, dtype_t5: torch.dtype | None = None, device: Any = "cpu", dtype: torch.dtype | None = None, model_options: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError(_NO_T5)


def flux_clip(dtype_t5: torch.dtype | None = None, t5_quantization_metadata: Any = None) -> type[FluxClipModel]:
    return FluxClipModel
