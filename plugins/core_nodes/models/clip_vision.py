"""CLIP image encoders (the ViT towers of CLIP ViT-L/14, ViT-H/14, ViT-bigG/14) for CLIPVisionLoader.

Weights use the transformers ``vision_model.*`` / ``visual_projection.weight`` layout of most
``models/clip_vision`` files (OpenCLIP ``visual.*`` files are converted to it); the sizes are read off the weights, so test-sized towers load like
real ones. :meth:`ClipVision.encode_image` gives the reference's CLIP_VISION_OUTPUT fields
(``last_hidden_state``, ``penultimate_hidden_states``, ``image_embeds``, ``image_sizes``,
``mm_projected``) after the reference's preprocessing: bicubic antialiased resize (of the short
side when cropping), centre crop, rounding to 8 bits, CLIP mean/std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models.clip import ClipEncoderLayers
from plugins.core_nodes.models.operations import Operations, TorchOperations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "vision_model."
# Every published CLIP vision tower uses 16 attention heads (the width is not a multiple of 64
# for ViT-H and bigG, so the text model's 64-wide-head rule does not apply).
HEADS = 16
# The 24-layer ViT-L towers were trained with the sigmoid GELU approximation, the OpenCLIP
# H and bigG towers (32 and 48 layers) with exact GELU.
EXACT_GELU_LAYERS = frozenset({32, 48})


class ClipVisionError(ValueError):
    """The file is not a CLIP vision tower this server can build."""


@dataclass(frozen=True)
class VisionConfig:
    width: int
    layers: int
    heads: int
    mlp_width: int
    patch_size: int
    image_size: int
    projection_dim: int
    quick_gelu: bool
    layer_norm_eps: float = 1e-5


# transformers' ``hidden_act`` names of the activations the towers use -> quick_gelu or not.
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def config_from_transformers(config: Mapping[str, Any]) -> VisionConfig:
    """The tower a transformers ``CLIPVisionConfig`` JSON describes (the reference's
    ``clip_vision_config_*.json`` files, which packs hand to ``ClipVisionModel``)."""
    kind = config.get("model_type", "clip_vision_model")
    if kind != "clip_vision_model":
        raise ClipVisionError(f"{kind} image encoders are not supported by comfykernel")
    act = config.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        raise ClipVisionError(f"a CLIP vision tower with hidden_act {act!r} is not supported by comfykernel")
    if config.get("num_channels", 3) != 3:
        raise ClipVisionError("CLIP vision towers take 3-channel images")
    return VisionConfig(
        width=int(config["hidden_size"]),
        layers=int(config["num_hidden_layers"]),
        heads=int(config["num_attention_heads"]),
        mlp_width=int(config["intermediate_size"]),
        patch_size=int(config["patch_size"]),
        image_size=int(config.get("image_size", 224)),
        projection_dim=int(config["projection_dim"]),
        quick_gelu=_ACTIVATIONS[act],
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
    )


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> VisionConfig:
    """The tower's sizes, read off its weights (transformers layout)."""
    layer0 = PREFIX + "encoder.layers.0."
    if layer0 + "layer_norm1.weight" not in sd:
        raise ClipVisionError(
            "not a CLIP vision model in the transformers layout (no vision_model.encoder.layers.0.*)"
        )
    if "visual_projection.weight" not in sd:
        raise ClipVisionError("the CLIP vision model has no visual_projection.weight")
    width = sd[layer0 + "layer_norm1.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(PREFIX + "encoder.layers."))
    patch = sd[PREFIX + "embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(sd[PREFIX + "embeddings.position_embedding.weight"].shape[0] - 1)
    return VisionConfig(
        width=width,
        layers=layers,
        heads=HEADS if width % HEADS == 0 else 1,
        mlp_width=sd[layer0 + "mlp.fc1.weight"].shape[0],
        patch_size=patch,
        image_size=grid * patch,
        projection_dim=sd["visual_projection.weight"].shape[0],
        quick_gelu=layers not in EXACT_GELU_LAYERS,
    )


class _Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.patch_embedding = ops.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = ops.Embedding((cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class _Tower(nn.Module):
    def __init__(self, cfg: VisionConfig, ops: Operations = TorchOperations) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg, ops)
        self.pre_layrnorm = ops.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)  # sic: the file's key
        self.encoder = ClipEncoderLayers(
            cfg.width, cfg.heads, cfg.mlp_width, cfg.layers, cfg.quick_gelu, cfg.layer_norm_eps, causal=False, ops=ops
        )
        self.post_layernorm = ops.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)


class ClipVisionModel(nn.Module):
    """The ViT tower and its projection; state dict keys are the transformers layout.

    ``operations`` builds the layers (torch's by default; the casting set lets the weights be
    stored in another dtype than the one computed in, as ``comfy.clip_vision`` keeps them)."""

    def __init__(self, cfg: VisionConfig, operations: Operations | None = None) -> None:
        super().__init__()
        ops = TorchOperations if operations is None else operations
        self.config = cfg
        self.vision_model = _Tower(cfg, ops)
        self.visual_projection = ops.Linear(cfg.width, cfg.projection_dim, bias=False)

    def forward(
        self, pixel_values: torch.Tensor, intermediate_output: int | None = -2
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, None]:
        """(last hidden state, the output of layer ``intermediate_output`` (negative counts from
        the end), projected class-token embedding, None): the reference's tuple, which
        IP-Adapter reads by position after calling the model itself."""
        tower = self.vision_model
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))
        layers = tower.encoder.layers
        wanted = None if intermediate_output is None else intermediate_output % len(layers)
        intermediate = None
        for index, layer in enumerate(layers):
            x = layer(x)
            if index == wanted:
                intermediate = x
        pooled = tower.post_layernorm(x[:, 0, :])
        return x, intermediate, self.visual_projection(pooled), None


def clip_preprocess(
    image: torch.Tensor,
    size: int,
    crop: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """``[B, H, W, C]`` images in 0..1 -> normalised ``[B, 3, size, size]`` pixels.

    With ``crop`` the short side is scaled to ``size`` and the centre cut out; without, the image
    is squashed to a square. Values are rounded to 8 bits before ``mean`` / ``std`` (CLIP's by
    default), as the encoders were trained on 8-bit images.
    """
    pixels = image[..., :3].movedim(-1, 1).float()
    if pixels.shape[2] != size or pixels.shape[3] != size:
        if crop:
            scale = size / min(pixels.shape[2], pixels.shape[3])
            target = (round(scale * pixels.shape[2]), round(scale * pixels.shape[3]))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top = (pixels.shape[2] - size) // 2
        left = (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t


class ClipVisionOutput:
    """The reference's CLIP_VISION_OUTPUT: fields readable as attributes and as ``out["name"]``."""

    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    image_embeds: torch.Tensor
    image_sizes: list[Any]
    mm_projected: torch.Tensor | None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)


class _Holder:
    """What packs hand to ``load_model_gpu`` as ``clip_vision.patcher``: the module and devices."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device


class ClipVision:
    """A loaded CLIP vision encoder (the CLIP_VISION value); it computes on ``load_device``."""

    def __init__(
        self,
        model: ClipVisionModel,
        load_device: torch.device | None = None,
        offload_device: torch.device | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = model.config.image_size
        self.image_mean = list(CLIP_MEAN)
        self.image_std = list(CLIP_STD)
        cpu = torch.device("cpu")
        self.patcher = _Holder(self.model, load_device or cpu, offload_device or cpu)
        # Packs move images here before calling ``model`` themselves (IP-Adapter).
        self.load_device = self.patcher.load_device
        self.offload_device = self.patcher.offload_device

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_sd(self, sd: Mapping[str, torch.Tensor]) -> Any:
        return self.model.load_state_dict(dict(sd), strict=False)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """Encode ``[B, H, W, C]`` images (see the module docstring for the fields)."""
        pixels = clip_preprocess(
            image.to(self.load_device), self.image_size, crop=crop, mean=self.image_mean, std=self.image_std
        )
        last, penultimate, embeds, _ = self.model(pixel_values=pixels, intermediate_output=-2)
        out = ClipVisionOutput()
        out["last_hidden_state"] = last
        out["penultimate_hidden_states"] = penultimate
        out["image_embeds"] = embeds
        out["image_sizes"] = [pixels.shape[1:]] * pixels.shape[0]
        out["mm_projected"] = None
        return out


# OpenCLIP's names for the tower's non-block weights -> transformers names.
_OPENCLIP_VISUAL = {
    "class_embedding": PREFIX + "embeddings.class_embedding",
    "conv1.weight": PREFIX + "embeddings.patch_embedding.weight",
    "positional_embedding": PREFIX + "embeddings.position_embedding.weight",
    "ln_pre.weight": PREFIX + "pre_layrnorm.weight",
    "ln_pre.bias": PREFIX + "pre_layrnorm.bias",
    "ln_post.weight": PREFIX + "post_layernorm.weight",
    "ln_post.bias": PREFIX + "post_layernorm.bias",
}


def openclip_visual_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """An OpenCLIP image tower (``{prefix}conv1``, ``{prefix}transformer.resblocks.N.*``,
    ``{prefix}proj``...) in the transformers layout; the blocks convert as the text tower's do."""
    from plugins.core_nodes.models.clip import openclip_to_hf

    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out = {PREFIX + k: v for k, v in openclip_to_hf(own).items() if k.startswith("encoder.")}
    for old, new in _OPENCLIP_VISUAL.items():
        if old in own:
            out[new] = own[old]
    if "proj" in own:
        # OpenCLIP multiplies x @ proj; a Linear layer stores the matrix transposed.
        out["visual_projection.weight"] = own["proj"].t().contiguous()
    return out


def load_clip_vision(sd: Mapping[str, torch.Tensor]) -> ClipVision:
    """A :class:`ClipVision` from a transformers- or OpenCLIP-layout state dict; a clear error
    for anything else."""
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        sd = openclip_visual_to_hf(sd)
    cfg = config_from_state_dict(sd)
    model = ClipVisionModel(cfg)
    # transformers files may carry a position_ids buffer, which this model does not need.
    missing, _ = model.load_state_dict(
        {k: v for k, v in sd.items() if not k.endswith("position_ids")}, strict=False
    )
    if missing:
        raise ClipVisionError(f"the CLIP vision model is missing weights: {missing[:5]}")
    return ClipVision(model)


# Where unCLIP checkpoints keep their image encoder (OpenCLIP layout).
CHECKPOINT_VISION_PREFIX = "embedder.model.visual."


def clip_vision_from_checkpoint(path: Any) -> ClipVision | None:
    """The CLIP vision tower a checkpoint carries (unCLIP models), or None when it has none.

    Only the tower's tensors are read from a ``.safetensors`` file; a pickle is read whole.
    """
    from pathlib import Path

    from plugins.core_nodes.models.checkpoint import SAFETENSORS_SUFFIXES, load_state_dict

    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith(CHECKPOINT_VISION_PREFIX)}  # noqa: SIM118
    else:
        sd = {k: v for k, v in load_state_dict(path)[0].items() if k.startswith(CHECKPOINT_VISION_PREFIX)}
    if not sd:
        return None
    visual = {"visual." + k[len(CHECKPOINT_VISION_PREFIX) :]: v for k, v in sd.items()}
    return load_clip_vision(visual)
