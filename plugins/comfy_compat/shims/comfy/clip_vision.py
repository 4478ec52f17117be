"""``comfy.clip_vision``: CLIP image encoders (ViT-L/14, ViT-L/14-336, ViT-H/14, ViT-bigG/14).

``load(path)`` / ``load_clipvision_from_sd(sd)`` build a :class:`ClipVisionModel` from a
transformers-layout or OpenCLIP-layout checkpoint, and ``encode_image(image)`` gives the
reference's :class:`Output` (``last_hidden_state``, ``penultimate_hidden_states``,
``image_embeds``, ``image_sizes``, ``mm_projected``). The preprocessing is the reference's
exactly (bicubic antialiased resize of the short side, centre crop, 8-bit rounding, CLIP
mean/std), since IP-Adapter style packs feed the embeddings straight into their projections.
SigLIP and DINO encoders are not provided; loading one raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F
from comfy.utils import load_torch_file, state_dict_prefix_replace, transformers_convert

log = logging.getLogger("comfykernel.compat")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Output:
    """Attribute bag that also answers ``out["name"]``."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, item: Any) -> None:
        setattr(self, key, item)


def clip_preprocess(
    image: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop: bool = True,
) -> torch.Tensor:
    """``[B, H, W, C]`` images in 0..1 -> normalised ``[B, 3, size, size]`` pixel values.

    With ``crop`` the short side is scaled to ``size`` and the centre cut out; without it the
    image is squashed to ``size x size``. Values are rounded to 8 bits like the JPEG-trained
    CLIP pipelines expect, then standardised with ``mean`` / ``std``.
    """
    image = image[..., :3].movedim(-1, 1)
    mean_t = torch.tensor(mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, device=image.device, dtype=image.dtype).view(3, 1, 1)
    if image.shape[2] != size or image.shape[3] != size:
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = F.interpolate(image, size=target, mode="bicubic", antialias=True)
        top = (image.shape[2] - size) // 2
        left = (image.shape[3] - size) // 2
        image = image[:, :, top : top + size, left : left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    return (image - mean_t) / std_t


# --- the model -----------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": lambda a: a * torch.sigmoid(1.702 * a),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda a: F.gelu(a, approximate="tanh"),
}

# Published configurations of the CLIP vision towers the reference recognises (transformers names).
_BASE = {"model_type": "clip_vision_model", "num_channels": 3, "patch_size": 14, "layer_norm_eps": 1e-5, "num_attention_heads": 16}
CONFIGS: dict[str, dict[str, Any]] = {
    "vitl": {**_BASE, "hidden_act": "quick_gelu", "hidden_size": 1024, "image_size": 224, "intermediate_size": 4096, "num_hidden_layers": 24, "projection_dim": 768},
    "vitl_336": {**_BASE, "hidden_act": "quick_gelu", "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "num_hidden_layers": 24, "projection_dim": 768},
    "h": {**_BASE, "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224, "intermediate_size": 5120, "num_hidden_layers": 32, "projection_dim": 1024},
    "g": {**_BASE, "hidden_act": "gelu", "hidden_size": 1664, "image_size": 224, "intermediate_size": 8192, "num_hidden_layers": 48, "projection_dim": 1280},
}


class _Attention(torch.nn.Module):
    def __init__(self, dim: int, heads: int, dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = ops.Linear(dim, dim, dtype=dtype, device=device)
        self.k_proj = ops.Linear(dim, dim, dtype=dtype, device=device)
        self.v_proj = ops.Linear(dim, dim, dtype=dtype, device=device)
        self.out_proj = ops.Linear(dim, dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _MLP(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        self.fc1 = ops.Linear(dim, hidden, dtype=dtype, device=device)
        self.fc2 = ops.Linear(hidden, dim, dtype=dtype, device=device)
        self.activation = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class _Layer(torch.nn.Module):
    def __init__(self, config: Mapping[str, Any], dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        dim = config["hidden_size"]
        eps = config.get("layer_norm_eps", 1e-5)
        self.layer_norm1 = ops.LayerNorm(dim, eps=eps, dtype=dtype, device=device)
        self.self_attn = _Attention(dim, config["num_attention_heads"], dtype, device, ops)
        self.layer_norm2 = ops.LayerNorm(dim, eps=eps, dtype=dtype, device=device)
        self.mlp = _MLP(dim, config["intermediate_size"], config["hidden_act"], dtype, device, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(torch.nn.Module):
    def __init__(self, config: Mapping[str, Any], dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_Layer(config, dtype, device, ops) for _ in range(config["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, intermediate_output: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if intermediate_output is not None and intermediate_output < 0:
            intermediate_output += len(self.layers)
        intermediate = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == intermediate_output:
                intermediate = x.clone()
        return x, intermediate


class _Embeddings(torch.nn.Module):
    def __init__(self, config: Mapping[str, Any], dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        dim, patch = config["hidden_size"], config["patch_size"]
        positions = (config["image_size"] // patch) ** 2 + 1
        self.class_embedding = torch.nn.Parameter(torch.empty(dim, dtype=dtype, device=device))
        self.patch_embedding = ops.Conv2d(config["num_channels"], dim, patch, stride=patch, bias=False, dtype=dtype, device=device)
        self.position_embedding = ops.Embedding(positions, dim, dtype=dtype, device=device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = comfy.ops.cast_to_input(self.class_embedding, patches).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + comfy.ops.cast_to_input(self.position_embedding.weight, patches)


class _VisionTransformer(torch.nn.Module):
    def __init__(self, config: Mapping[str, Any], dtype: Any, device: Any, ops: Any) -> None:
        super().__init__()
        dim = config["hidden_size"]
        self.embeddings = _Embeddings(config, dtype, device, ops)
        # "pre_layrnorm" (sic) is the transformers key name.
        self.pre_layrnorm = ops.LayerNorm(dim, dtype=dtype, device=device)
        self.encoder = _Encoder(config, dtype, device, ops)
        self.post_layernorm = ops.LayerNorm(dim, dtype=dtype, device=device)

    def forward(self, pixel_values: torch.Tensor, intermediate_output: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x, intermediate = self.encoder(x, intermediate_output)
        return x, intermediate, self.post_layernorm(x[:, 0, :])


class CLIPVisionModelProjection(torch.nn.Module):
    """CLIP's vision tower plus its projection into the joint embedding space."""

    def __init__(self, config: Mapping[str, Any], dtype: Any, device: Any, operations: Any) -> None:
        super().__init__()
        self.vision_model = _VisionTransformer(config, dtype, device, operations)
        self.visual_projection = operations.Linear(config["hidden_size"], config["projection_dim"], bias=False, dtype=dtype, device=device)

    def forward(self, pixel_values: torch.Tensor, intermediate_output: int | None = -2) -> tuple[Any, ...]:
        x, intermediate, pooled = self.vision_model(pixel_values, intermediate_output)
        return x, intermediate, self.visual_projection(pooled), None


class _Holder:
    """What ``load_model_gpu`` gets for a CLIP vision model: the module and its devices."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device


class ClipVisionModel:
    """A CLIP vision encoder built from a config dict (or a JSON file path)."""

    def __init__(self, json_config: str | Path | Mapping[str, Any]) -> None:
        if isinstance(json_config, Mapping):
            config = dict(json_config)
        else:
            with open(json_config) as f:
                config = json.load(f)
        self.image_size: int = config.get("image_size", 224)
        self.image_mean = config.get("image_mean", list(CLIP_MEAN))
        self.image_std = config.get("image_std", list(CLIP_STD))
        self.model_type = config.get("model_type", "clip_vision_model")
        if self.model_type != "clip_vision_model":
            raise ValueError(f"comfy.clip_vision: {self.model_type} image encoders are not supported by comfykernel")
        self.config = config
        self.return_all_hidden_states = False
        self.load_device = comfy.model_management.text_encoder_device()
        offload = comfy.model_management.text_encoder_offload_device()
        self.dtype = comfy.model_management.text_encoder_dtype(self.load_device)
        self.model = CLIPVisionModelProjection(config, self.dtype, offload, comfy.ops.manual_cast)
        # Inference only: packs call self.model directly, outside any no_grad block.
        self.model.eval().requires_grad_(False)
        self.patcher = _Holder(self.model, self.load_device, offload)

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        return self.model.load_state_dict(sd, strict=False)

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> Output:
        """Encode ``[B, H, W, C]`` images; see the module docstring for the fields."""
        comfy.model_management.load_model_gpu(self.patcher)
        pixels = clip_preprocess(
            image.to(self.load_device), size=self.image_size, mean=self.image_mean, std=self.image_std, crop=crop
        ).float()
        last, penultimate, embeds, projected = self.model(pixel_values=pixels, intermediate_output=-2)
        where = comfy.model_management.intermediate_device()
        out = Output()
        out["last_hidden_state"] = last.to(where)
        out["image_embeds"] = embeds.to(where)
        out["image_sizes"] = [pixels.shape[1:]] * pixels.shape[0]
        out["penultimate_hidden_states"] = penultimate.to(where)
        out["mm_projected"] = projected
        return out


def convert_to_transformers(sd: MutableMapping[str, Any], prefix: str) -> MutableMapping[str, Any]:
    """OpenCLIP visual keys (``{prefix}transformer.resblocks...``) -> transformers layout; other
    layouts only lose ``prefix``."""
    if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" not in sd:
        return state_dict_prefix_replace(sd, {prefix: ""})
    renames = {
        "class_embedding": "vision_model.embeddings.class_embedding",
        "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "ln_post.bias": "vision_model.post_layernorm.bias",
        "ln_post.weight": "vision_model.post_layernorm.weight",
        "ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    }
    for old, new in renames.items():
        if prefix + old in sd:
            sd[new] = sd.pop(prefix + old)
    if prefix + "proj" in sd:
        sd["visual_projection.weight"] = sd.pop(prefix + "proj").transpose(0, 1)
    return transformers_convert(sd, prefix, "vision_model.", 48)


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
