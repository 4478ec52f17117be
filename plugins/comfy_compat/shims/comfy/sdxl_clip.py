"""``comfy.sdxl_clip``: SDXL's two text encoders (CLIP-L and OpenCLIP bigG) and tokenizers.

SDXL conditions on CLIP-L's and bigG's penultimate layers (not final-normed) side by side, and
pools from bigG; the refiner uses bigG alone. See :mod:`comfy.sd1_clip` for how these classes
relate to the core nodes' encoders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from comfy.sd1_clip import SD1ClipModel, SD1Tokenizer, SDClipModel, SDTokenizer, TokenChunks, _StackFamily

from plugins.core_nodes.models import clip as core_clip


class SDXLClipG(SDClipModel):
    """OpenCLIP bigG read at its penultimate layer without the final norm (SDXL's way)."""

    def __init__(
        self,
        device: Any = "cpu",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "penultimate",
        layer_idx: int | None = None,
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if layer == "penultimate":
            layer, layer_idx = "hidden", -2
        kwargs.setdefault("textmodel_json_config", core_clip.CLIP_G)
        kwargs.setdefault("special_tokens", {"start": 49406, "end": 49407, "pad": 0})
        kwargs.setdefault("layer_norm_hidden_state", False)
        super().__init__(
            device=device, max_length=max_length, freeze=freeze, layer=layer, layer_idx=layer_idx,
            dtype=dtype, model_options=model_options, **kwargs,
        )

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        return super().load_sd(sd)


class SDXLClipGTokenizer(SDTokenizer):
    """bigG's tokenizer: pads with 0 and takes 1280-wide ``clip_g`` embeddings."""

    def __init__(
        self,
        tokenizer_path: str | None = None,
        embedding_directory: str | Sequence[str] | None = None,
        tokenizer_data: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            tokenizer_path, pad_with_end=False, embedding_directory=embedding_directory,
            embedding_size=1280, embedding_key="clip_g", tokenizer_data=tokenizer_data,
        )


class SDXLTokenizer:
    """Both SDXL tokenizers: ``tokenize_with_weights`` gives ``{"g": ..., "l": ...}``."""

    def __init__(self, embedding_directory: str | Sequence[str] | None = None, tokenizer_data: Mapping[str, Any] | None = None) -> None:
        self.clip_l = SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        self.clip_g = SDXLClipGTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, TokenChunks]:
        return {
            "g": self.clip_g.tokenize_with_weights(text, return_word_ids, **kwargs),
            "l": self.clip_l.tokenize_with_weights(text, return_word_ids, **kwargs),
        }

    def untokenize(self, token_weight_pair: Sequence[tuple[Any, ...]]) -> Any:
        return self.clip_g.untokenize(token_weight_pair)

    def state_dict(self) -> dict[str, Any]:
        return {}


class SDXLClipModel(torch.nn.Module, metaclass=_StackFamily):
    """CLIP-L (penultimate, unnormed, unprojected) + bigG; ``encode_token_weights`` joins their
    outputs on the feature axis (cut to the shorter) and pools from bigG."""

    stack_families = ("sdxl",)

    def __init__(
        self,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
        *,
        clip_l: SDClipModel | None = None,
        clip_g: SDClipModel | None = None,
    ) -> None:
        super().__init__()
        self.clip_l = clip_l if clip_l is not None else SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            return_projected_pooled=False, model_options=model_options,
        )
        self.clip_g = clip_g if clip_g is not None else SDXLClipG(device=device, dtype=dtype, model_options=model_options)
        self.dtypes = {dtype}

    def set_clip_options(self, options: Mapping[str, Any]) -> None:
        self.clip_l.set_clip_options(options)
        self.clip_g.set_clip_options(options)

    def reset_clip_options(self) -> None:
        self.clip_g.reset_clip_options()
        self.clip_l.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        g_out, g_pooled = self.clip_g.encode_token_weights(token_weight_pairs["g"])
        l_out, _ = self.clip_l.encode_token_weights(token_weight_pairs["l"])
        cut = min(l_out.shape[1], g_out.shape[1])
        return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), g_pooled

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        if "text_model.encoder.layers.30.mlp.fc1.weight" in sd:
            return self.clip_g.load_sd(sd)
        return self.clip_l.load_sd(sd)


class SDXLRefinerClipModel(SD1ClipModel):
    """The refiner's text encoder: bigG alone, under ``"g"``."""

    stack_families = ("sdxl_refiner",)

    def __init__(
        self,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
        *,
        clip_g: SDClipModel | None = None,
    ) -> None:
        if clip_g is None:
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_name="g", clip_model=SDXLClipG)
            return
        torch.nn.Module.__init__(self)
        self.clip_name, self.clip = "g", "clip_g"
        self.clip_g = clip_g
        self.dtypes = {dtype}


class StableCascadeClipGTokenizer(SDTokenizer):
    """Stable Cascade's bigG tokenizer: pads with the end token, 1280-wide ``clip_g`` embeddings."""

    def __init__(self, tokenizer_path: str | None = None, embedding_directory: str | Sequence[str] | None = None, tokenizer_data: Mapping[str, Any] | None = None) -> None:
        super().__init__(
            tokenizer_path, pad_with_end=True, embedding_directory=embedding_directory,
            embedding_size=1280, embedding_key="clip_g", tokenizer_data=tokenizer_data,
        )


class StableCascadeTokenizer(SD1Tokenizer):
    def __init__(self, embedding_directory: str | Sequence[str] | None = None, tokenizer_data: Mapping[str, Any] | None = None) -> None:
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, clip_name="g", tokenizer=StableCascadeClipGTokenizer)


class StableCascadeClipG(SDClipModel):
    """bigG read at its last layer without the final norm, projected pooled output."""

    def __init__(
        self,
        device: Any = "cpu",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "hidden",
        layer_idx: int | None = -1,
        dtype: torch.dtype | None = None,
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            device=device, freeze=freeze, layer=layer, layer_idx=layer_idx, textmodel_json_config=core_clip.CLIP_G,
            dtype=dtype, special_tokens={"start": 49406, "end": 49407, "pad": 49407},
            layer_norm_hidden_state=False, return_projected_pooled=True, model_options=model_options,
        )


class StableCascadeClipModel(SD1ClipModel):
    """Stable Cascade's text encoder: bigG alone, under ``"g"``."""

    # No server text encoder is Stable Cascade's: without this, SD1ClipModel's families would
    # make every SD1 / SD2 CLIP pass isinstance(..., StableCascadeClipModel) (tinyterra branches on it).
    stack_families: tuple[str, ...] = ()

    def __init__(self, device: Any = "cpu", dtype: torch.dtype | None = None, model_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, dtype=dtype, clip_name="g", clip_model=StableCascadeClipG, model_options=model_options)


__all__ = [
    "StableCascadeClipG",
    "StableCascadeClipGTokenizer",
    "StableCascadeClipModel",
    "StableCascadeTokenizer",
    "SDXLClipG",
    "SDXLClipGTokenizer",
    "SDXLClipModel",
    "SDXLRefinerClipModel",
    "SDXLTokenizer",
]
