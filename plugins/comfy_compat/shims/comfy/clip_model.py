"""``comfy.clip_model``: the reference's CLIP text-model class, on the core nodes' network.

``CLIPTextModel(config_dict, dtype, device, operations)`` reads the transformers-style config
the reference reads (``hidden_size``, ``num_hidden_layers``, ``hidden_act``...) and has the
layout a CLIP's ``cond_stage_model`` members hold as ``transformer``: ``text_model``
(``embeddings.token_embedding``, ``encoder.layers``, ``final_layer_norm``),
``text_projection``, ``num_layers``, ``get_input_embeddings`` / ``set_input_embeddings``, and
the reference's call ``(input_tokens, attention_mask, embeds, num_tokens, intermediate_output,
final_layer_norm_intermediate, dtype)`` -> ``(last, intermediate, projected pooled, pooled)``.
Its weights load in the transformers layout (``text_model.*``, ``text_projection.weight``)
through ``load_sd``; it is built with random weights, as the reference's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from comfy.sd1_clip import _config_from_json

from plugins.core_nodes.models.clip import ClipTextModel
from plugins.core_nodes.models.clip_objects import TransformerLayout

__all__ = ["CLIPTextModel"]


class CLIPTextModel(TransformerLayout):
    """A CLIP text transformer built from a config dict (see the module docstring)."""

    def __init__(
        self,
        config_dict: Mapping[str, Any],
        dtype: torch.dtype | None = None,
        device: Any = None,
        operations: Any = None,
    ) -> None:
        model = ClipTextModel(_config_from_json(config_dict), operations)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        super().__init__(model.eval().requires_grad_(False))

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        """Weights in the transformers layout (``text_model.`` prefix optional)."""
        return self.text_model.load_state_dict({k.removeprefix("text_model."): v for k, v in sd.items()}, strict=False)
