"""Tiny random-weight SD3 / SD3.5 MMDiTs in the reference's single-file key layout, for tests.

Weights come from our own module (so every key and shape is a real checkpoint's, only narrower);
``diffusers_transformer_config`` describes the same network for diffusers' SD3Transformer2DModel.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from plugins.core_nodes.models.mmdit import MMDiT, MMDiTConfig

# Two heads of 64 channels (the reference's head width), three joint blocks.
TINY_SD35_MEDIUM = MMDiTConfig(
    hidden_size=128,
    depth=3,
    num_heads=2,
    mlp_hidden=512,
    adm_in_channels=48,
    context_in_dim=96,
    pos_embed_max_size=8,
    qk_norm="rms",
    x_block_self_attn_layers=(0, 1),
)
TINY_SD35_LARGE = replace(TINY_SD35_MEDIUM, x_block_self_attn_layers=())
TINY_SD3 = replace(TINY_SD35_MEDIUM, qk_norm=None, x_block_self_attn_layers=())

# The real sizes (the reference's configs): SD3 medium, SD3.5 large and SD3.5 medium.
SD3_MEDIUM = MMDiTConfig(hidden_size=1536, depth=24, num_heads=24, mlp_hidden=6144, pos_embed_max_size=192)
SD35_LARGE = MMDiTConfig(
    hidden_size=2432, depth=38, num_heads=38, mlp_hidden=9728, pos_embed_max_size=192, qk_norm="rms"
)
SD35_MEDIUM = MMDiTConfig(
    hidden_size=1536,
    depth=24,
    num_heads=24,
    mlp_hidden=6144,
    pos_embed_max_size=384,
    qk_norm="rms",
    x_block_self_attn_layers=tuple(range(13)),
)


def mmdit_weights(config: MMDiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``config``: default init, random norm scales and position table, and
    modulation layers scaled up so the gates and shifts matter."""
    torch.manual_seed(seed)
    model = MMDiT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_q.weight", "ln_k.weight")):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "adaLN_modulation" in name:
                p.mul_(4.0)
        model.pos_embed.copy_(0.5 * torch.randn_like(model.pos_embed))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def meta_weights(config: MMDiTConfig) -> dict[str, torch.Tensor]:
    """Shapes only: a full-size layout on the meta device."""
    with torch.device("meta"):
        return dict(MMDiT(config).state_dict())


def diffusers_transformer_config(config: MMDiTConfig) -> dict[str, Any]:
    """diffusers' ``SD3Transformer2DModel`` config for the same network."""
    return {
        "sample_size": config.pos_embed_max_size,
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "num_layers": config.depth,
        "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_in_dim,
        "caption_projection_dim": config.hidden_size,
        "pooled_projection_dim": config.adm_in_channels,
        "out_channels": config.out_channels,
        "pos_embed_max_size": config.pos_embed_max_size,
        "dual_attention_layers": config.x_block_self_attn_layers,
        "qk_norm": "rms_norm" if config.qk_norm == "rms" else None,
    }


def diffusers_transformer(config: MMDiTConfig, weights: dict[str, torch.Tensor]) -> Any:
    """diffusers' SD3 transformer holding ``weights`` (converted by diffusers' own single-file code)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = SD3Transformer2DModel(**diffusers_transformer_config(config))
    converted = convert_sd3_transformer_checkpoint_to_diffusers(
        {f"model.diffusion_model.{k}": v.clone() for k, v in weights.items()}
    )
    model.load_state_dict(converted, strict=True)
    return model.eval()
