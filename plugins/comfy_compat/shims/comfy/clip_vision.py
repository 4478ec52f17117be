"""``comfy.clip_vision``: CLIP image encoders (ViT-L/14, ViT-L/14-336, ViT-H/14, ViT-bigG/14).

``load(path)`` / ``load_clipvision_from_sd(sd)`` build a :class:`ClipVisionModel` from a
transformers-layout or OpenCLIP-layout checkpoint, as does ``ClipVisionModel(json_config)`` from
a transformers config, and ``encode_image(image)`` gives the reference's :class:`Output`
(``last_hidden_state``, ``penultimate_hidden_states``, ``image_embeds``, ``image_sizes``,
``mm_projected``). The network, preprocessing and output are the core CLIP vision encoder's
(``plugins.core_nodes.models.clip_vision``, what CLIPVisionLoader gives), so a pack's encoder
and the node's compute the same and go wherever a CLIP_VISION goes. As in the reference the
weights are stored in the text-encoder dtype (fp16) and cast per layer to float32 to compute.
SigLIP and DINO encoders are not provided; loading one raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import comfy.model_management
import torch
from comfy.utils import load_torch_file, state_dict_prefix_replace

from plugins.core_nodes.models import clip_vision as _core
from plugins.core_nodes.models.operations import CastOperations, cast_plain_weights

log = logging.getLogger("comfykernel.compat")

CLIP_MEAN = _core.CLIP_MEAN
CLIP_STD = _core.CLIP_STD

# The reference's name for the encoder output; the same class as the core node's output.
Output = _core.ClipVisionOutput


def clip_preprocess(
    image: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop: bool = True,
) -> torch.Tensor:
    """``[B, H, W, C]`` images in 0..1 -> normalised ``[B, 3, size, size]`` pixel values (the
    core preprocessing, with the reference's argument order)."""
    return _core.clip_preprocess(image, size, crop=crop, mean=mean, std=std)


# Published configurations of the CLIP vision towers the reference recognises (transformers names).
_BASE = {"model_type": "clip_vision_model", "num_channels": 3, "patch_size": 14, "layer_norm_eps": 1e-5, "num_attention_heads": 16}
CONFIGS: dict[str, dict[str, Any]] = {
    "vitl": {**_BASE, "hidden_act": "quick_gelu", "hidden_size": 1024, "image_size": 224, "intermediate_size": 4096, "num_hidden_layers": 24, "projection_dim": 768},
    "vitl_336": {**_BASE, "hidden_act": "quick_gelu", "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "num_hidden_layers": 24, "projection_dim": 768},
    "h": {**_BASE, "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224, "intermediate_size": 5120, "num_hidden_layers": 32, "projection_dim": 1024},
    "g": {**_BASE, "hidden_act": "gelu", "hidden_size": 1664, "image_size": 224, "intermediate_size": 8192, "num_hidden_layers": 48, "projection_dim": 1280},
}


class ClipVisionModel(_core.ClipVision):
    """A CLIP vision encoder built from a transformers config dict (or a JSON file path): the
    core encoder, its weights stored in the text-encoder dtype on the offload device."""

    def __init__(self, json_config: str | Path | Mapping[str, Any]) -> None:
        if isinstance(json_config, Mapping):
            config = dict(json_config)
        else:
            with open(json_config) as f:
                config = json.load(f)
        self.config = config
        self.model_type = config.get("model_type", "clip_vision_model")
        try:
            vision_config = _core.config_from_transformers(config)
        except _core.ClipVisionError as e:
            raise ValueError(f"comfy.clip_vision: {e}") from None
        load_device = comfy.model_management.text_encoder_device()
        offload = comfy.model_management.text_encoder_offload_device()
        self.dtype = comfy.model_management.text_encoder_dtype(load_device)
        model = _core.ClipVisionModel(vision_config, operations=CastOperations)
        cast_plain_weights(model, self.dtype)
        super().__init__(model.to(offload), load_device, offload)
        self.image_size = config.get("image_size", vision_config.image_size)
        self.image_mean = config.get("image_mean", list(CLIP_MEAN))
        self.image_std = config.get("image_std", list(CLIP_STD))
        self.return_all_hidden_states = False

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> Output:
        """Encode ``[B, H, W, C]`` images on the load device; the tensors come back on the
        intermediate device, as the reference returns them."""
        comfy.model_management.load_model_gpu(self.patcher)
        out = super().encode_image(image, crop=crop)
        where = comfy.model_management.intermediate_device()
        for name in ("last_hidden_state", "image_embeds", "penultimate_hidden_states"):
            out[name] = out[name].to(where)
        return out


def convert_to_transformers(sd: MutableMapping[str, Any], prefix: str) -> MutableMapping[str, Any]:
    """OpenCLIP visual keys (``{prefix}transformer.resblocks...``) -> transformers layout, in
    ``sd`` itself (the core conversion); other layouts only lose ``prefix``."""
    if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" not in sd:
        return state_dict_prefix_replace(sd, {prefix: ""})
    converted = _core.openclip_visual_to_hf(sd, prefix)
    for key in [k for k in sd if k.startswith(prefix)]:
        sd.pop(key)
    sd.update(converted)
    return sd


def _config_for(sd: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if "vision_model.encoder.layers.47.layer_norm1.weight" in sd:
        return CONFIGS["g"]
    if "vision_model.encoder.layers.30.layer_norm1.weight" in sd:
        return CONFIGS["h"]
    if "vision_model.encoder.layers.22.layer_norm1.weight" in sd:
        if sd["vision_model.encoder.layers.0.layer_norm1.weight"].shape[0] == 1152:
            raise ValueError("comfy.clip_vision: SigLIP image encoders are not supported by comfykernel")
        if "multi_modal_projector.linear_1.bias" in sd:
            raise ValueError("comfy.clip_vision: LLaVA image encoders are not supported by comfykernel")
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        return CONFIGS["vitl_336"] if positions == 577 else CONFIGS["vitl"]
    if any(k.startswith(("encoder.layer.", "layer.0.")) for k in sd):
        raise ValueError("comfy.clip_vision: DINO image encoders are not supported by comfykernel")
    return None


def _fit_config(config: dict[str, Any], sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The config with its sizes read off the weights (covers towers of non-standard width)."""
    fitted = dict(config)
    layer = "vision_model.encoder.layers.0."
    if layer + "layer_norm1.weight" in sd:
        fitted["hidden_size"] = sd[layer + "layer_norm1.weight"].shape[0]
        fitted["intermediate_size"] = sd[layer + "mlp.fc1.weight"].shape[0]
        fitted["num_hidden_layers"] = 1 + max(
            int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers.")
        )
    if "vision_model.embeddings.patch_embedding.weight" in sd:
        fitted["patch_size"] = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    if "vision_model.embeddings.position_embedding.weight" in sd:
        grid = math.isqrt(sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1)
        fitted["image_size"] = grid * fitted["patch_size"]
    if "visual_projection.weight" in sd:
        fitted["projection_dim"] = sd["visual_projection.weight"].shape[0]
    return fitted


def load_clipvision_from_sd(
    sd: MutableMapping[str, torch.Tensor], prefix: str = "", convert_keys: bool = False
) -> ClipVisionModel | None:
    """A :class:`ClipVisionModel` for ``sd``, or None when it is no CLIP vision model.

    As in the reference, the keys the model took are removed from ``sd``.
    """
    if convert_keys:
        sd = convert_to_transformers(sd, prefix)
    config = _config_for(sd)
    if config is None:
        return None
    clip = ClipVisionModel(_fit_config(config, sd))
    missing, unexpected = clip.load_sd(sd)
    if missing:
        log.warning("missing clip vision: %s", missing)
    keep = set(unexpected)
    for key in [k for k in sd if k not in keep]:
        sd.pop(key)
    return clip


def load(ckpt_path: str) -> ClipVisionModel | None:
    """A :class:`ClipVisionModel` from a checkpoint file (transformers or OpenCLIP layout)."""
    sd = load_torch_file(ckpt_path)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        return load_clipvision_from_sd(sd, prefix="visual.", convert_keys=True)
    return load_clipvision_from_sd(sd)
