"""PhotoMaker (v1) ID encoder: a CLIP ViT image tower and a fuse module that rewrites the text
embedding of the class word ("man", "woman" ...) with the identity of a reference photo.

The file (``models/photomaker``; the published ``photomaker-v1.bin`` keeps the encoder under
``id_encoder``, beside LoRA weights the reference does not read) holds the transformers layout
of ``CLIPVisionModelWithProjection`` (``vision_model.*``, ``visual_projection``) plus
``visual_projection_2`` and ``fuse_module.*``. Sizes are read off the weights: the published
encoder is ViT-L/14 at 224 pixels, projections to 768 and 1280 wide (2048 together: SDXL's text
width), and the fuse module works at that width.

The identity embedding is the tower's class-token output (after ``post_layernorm``) through both
projections, concatenated. The fuse: ``mlp1`` (LayerNorm, Linear, exact GELU, Linear) of
[text token, identity] plus the text token, then ``mlp2`` with a residual, then a LayerNorm.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.clip_vision import ClipVisionError, ClipVisionModel, config_from_state_dict

ID_ENCODER_KEY = "id_encoder"


class PhotoMakerError(ValueError):
    """The file is not a PhotoMaker ID encoder, or the inputs do not fit it (named in the message)."""


class FuseMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    """Mixes an identity embedding into the text embedding of the class word."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.mlp1 = FuseMLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = FuseMLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def fuse_fn(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        stacked = self.mlp1(torch.cat([prompt_embeds, id_embeds], dim=-1)) + prompt_embeds
        return self.layer_norm(self.mlp2(stacked))

    def forward(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor, class_tokens_mask: torch.Tensor) -> torch.Tensor:
        """``prompt_embeds`` ``[B, T, D]`` with the tokens marked in ``class_tokens_mask``
        ``[B, T]`` replaced by their fusion with ``id_embeds`` ``[B, N, 1, D]``. As in the
        reference, the first k images stand for the k marked tokens (one image per token)."""
        id_embeds = id_embeds.to(prompt_embeds.dtype)
        batch, images = id_embeds.shape[:2]
        width = prompt_embeds.shape[-1]
        marked = int(class_tokens_mask.sum())
        chosen = id_embeds.reshape(batch, images, width)[:, : min(marked, images)].reshape(-1, width)
        mask = class_tokens_mask.reshape(-1).bool()
        flat = prompt_embeds.reshape(-1, width)
        tokens = flat[mask]
        if tokens.shape[0] != chosen.shape[0]:
            raise PhotoMakerError(
                f"PhotoMaker: {tokens.shape[0]} class-word tokens but {chosen.shape[0]} identity embeddings"
            )
        out = flat.clone()
        out[mask] = self.fuse_fn(tokens, chosen).to(out.dtype)
        return out.reshape(prompt_embeds.shape)


class PhotoMakerIDEncoder(ClipVisionModel):
    """The CLIP image tower with a second projection and the fuse module (the PHOTOMAKER value)."""

    def __init__(self, sd: Mapping[str, torch.Tensor]) -> None:
        try:
            cfg = config_from_state_dict(sd)
        except ClipVisionError as exc:
            raise PhotoMakerError(f"not a PhotoMaker ID encoder ({exc})") from None
        super().__init__(cfg)
        second = sd["visual_projection_2.weight"].shape[0]
        self.visual_projection_2 = nn.Linear(cfg.width, second, bias=False)
        self.fuse_module = FuseModule(cfg.projection_dim + second)
        self.load_device = torch.device("cpu")

    @property
    def embed_dim(self) -> int:
        """The text width the fuse module works at."""
        return self.fuse_module.layer_norm.normalized_shape[0]

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """The class-token output of the tower (after ``post_layernorm``), before any projection."""
        tower = self.vision_model
        x = tower.pre_layrnorm(tower.embeddings(pixels))
        for layer in tower.encoder.layers:
            x = layer(x)
        return tower.post_layernorm(x[:, 0, :])

    def forward(  # type: ignore[override]
        self, id_pixel_values: torch.Tensor, prompt_embeds: torch.Tensor, class_tokens_mask: torch.Tensor
    ) -> torch.Tensor:
        """``id_pixel_values`` ``[B, N, 3, H, W]`` (preprocessed), ``prompt_embeds`` ``[B, T, D]``,
        ``class_tokens_mask`` ``[B, T]``: the prompt embeddings with the class tokens fused."""
        batch, images = id_pixel_values.shape[:2]
        shared = self.pooled(id_pixel_values.reshape(batch * images, *id_pixel_values.shape[2:]))
        ids = torch.cat([self.visual_projection(shared), self.visual_projection_2(shared)], dim=-1)
        return self.fuse_module(prompt_embeds, ids.reshape(batch, images, 1, -1), class_tokens_mask)


def _read(path: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors: a pickle's ``id_encoder`` dict (the published layout) or a flat file."""
    from plugins.core_nodes.models.checkpoint import PICKLE_SUFFIXES, CheckpointError, load_state_dict

    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        try:
            data: Any = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # a damaged or unsafe pickle: the generic reader words the error
            data = None
        if isinstance(data, dict) and isinstance(data.get(ID_ENCODER_KEY), dict):
            return {k: v for k, v in data[ID_ENCODER_KEY].items() if isinstance(v, torch.Tensor)}
    try:
        sd, _ = load_state_dict(path)
    except CheckpointError as exc:
        raise PhotoMakerError(str(exc)) from None
    prefix = ID_ENCODER_KEY + "."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def build_photomaker(sd: Mapping[str, torch.Tensor]) -> PhotoMakerIDEncoder:
    """A :class:`PhotoMakerIDEncoder` from its weights, or :class:`PhotoMakerError`."""
    for key in ("visual_projection_2.weight", "fuse_module.layer_norm.weight"):
        if key not in sd:
            raise PhotoMakerError(f"not a PhotoMaker ID encoder: no {key}")
    model = PhotoMakerIDEncoder(sd)
    weights = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:300]
        raise PhotoMakerError(f"the PhotoMaker weights do not fit its network ({detail})") from None
    return model.eval().requires_grad_(False)


def load_photomaker(path: str | Path) -> PhotoMakerIDEncoder:
    """PhotoMakerLoader: the ID encoder of a ``models/photomaker`` file."""
    return build_photomaker(_read(Path(path)))
