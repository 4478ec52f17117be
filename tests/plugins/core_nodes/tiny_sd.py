"""Tiny random-weight SD1 / SD2 / SDXL models in the real single-file key layout, for tests.

Weights come from our own modules (so every key and shape is what a real checkpoint has, only
narrower); the diffusers configs describe the same architectures for the reference models.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetConfig, UNetModel
from plugins.core_nodes.models.vae import AutoencoderKL, VAEConfig

CONTEXT = {"sd1": 48, "sd2": 40, "sdxl": 64}
POOLED_SDXL = 32

UNET_CONFIGS: dict[str, UNetConfig] = {
    # Attention on every level but the last, as in SD1.5; conv projections and 8 heads.
    "sd1": UNetConfig(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=(2, 2),
        transformer_depth=(1, 0),
        transformer_depth_output=(0, 0, 0, 1, 1, 1),
        transformer_depth_middle=1,
        context_dim=CONTEXT["sd1"],
        use_linear_in_transformer=False,
        num_heads=8,
    ),
    "sd2": UNetConfig(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=(2, 2),
        transformer_depth=(1, 0),
        transformer_depth_output=(0, 0, 0, 1, 1, 1),
        transformer_depth_middle=1,
        context_dim=CONTEXT["sd2"],
        use_linear_in_transformer=True,
        num_head_channels=64,
    ),
    # SDXL: no attention on the first level, deeper transformers below, ADM size conditioning.
    "sdxl": UNetConfig(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=(2, 2),
        transformer_depth=(0, 2),
        transformer_depth_output=(2, 2, 2, 0, 0, 0),
        transformer_depth_middle=2,
        context_dim=CONTEXT["sdxl"],
        use_linear_in_transformer=True,
        num_head_channels=64,
        adm_in_channels=POOLED_SDXL + 6 * ADM_SCALAR_DIM,
    ),
}
# The refiner conditions on OpenCLIP-G alone: its context is the pooled width, and its ADM holds
# five embedded scalars (size, crop, aesthetic score) instead of six.
UNET_CONFIGS["sdxl_refiner"] = replace(
    UNET_CONFIGS["sdxl"], context_dim=POOLED_SDXL, adm_in_channels=POOLED_SDXL + 5 * ADM_SCALAR_DIM
)

# Not tiny: the real SD1.5 UNet (860M parameters), for the detection tests (built on the meta
# device) and the benchmarks (random weights). The other real-size families derive from it.
SD15_UNET = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    channel_mult=(1, 2, 4, 4),
    num_res_blocks=(2, 2, 2, 2),
    transformer_depth=(1, 1, 1, 0),
    transformer_depth_output=(0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    transformer_depth_middle=1,
    context_dim=768,
    use_linear_in_transformer=False,
    num_heads=8,
)

VAE_CONFIG = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, in_channels=3, out_ch=3)


def diffusers_config(cfg: UNetConfig) -> dict[str, Any]:
    """diffusers' ``UNet2DConditionModel`` config equivalent to one of our UNet configs."""
    attn = [d > 0 for d in cfg.transformer_depth]
    heads = [cfg.heads_for(cfg.model_channels * m)[0] for m in cfg.channel_mult]
    out: dict[str, Any] = {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks[0],
        "cross_attention_dim": cfg.context_dim,
        "attention_head_dim": cfg.num_heads if cfg.num_heads else heads,
        "use_linear_projection": cfg.use_linear_in_transformer,
        "transformer_layers_per_block": [max(d, 1) for d in cfg.transformer_depth],
        "class_embed_type": None,
        "addition_embed_type": None,
        "addition_time_embed_dim": None,
        "projection_class_embeddings_input_dim": None,
    }
    if cfg.adm_in_channels is not None:
        out.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=ADM_SCALAR_DIM,
            projection_class_embeddings_input_dim=cfg.adm_in_channels,
        )
    return out


def diffusers_unet_config(family: str) -> dict[str, Any]:
    return {"sample_size": 16, **diffusers_config(UNET_CONFIGS[family])}


def diffusers_vae_config() -> dict[str, Any]:
    c = VAE_CONFIG
    n = len(c.ch_mult)
    return {
        "sample_size": 32,
        "in_channels": c.in_channels,
        "out_channels": c.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [c.ch * m for m in c.ch_mult],
        "latent_channels": c.z_channels,
        "layers_per_block": c.num_res_blocks,
        "scaling_factor": 0.18215,
    }


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Default init, plus random norm affines so a swapped norm key would show in the outputs."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def unet_weights(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return _randomize(UNetModel(UNET_CONFIGS[family]), seed)


def vae_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return _randomize(AutoencoderKL(VAE_CONFIG), seed)


def text_encoder_stub(family: str) -> dict[str, torch.Tensor]:
    """Just enough text-encoder keys (right layout, tiny widths) for family detection."""
    if family == "sd1":
        return {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(CONTEXT["sd1"])}
    if family == "sd2":
        return {
            "cond_stage_model.model.ln_final.weight": torch.ones(CONTEXT["sd2"]),
            "cond_stage_model.model.text_projection": torch.zeros(CONTEXT["sd2"], CONTEXT["sd2"]),
        }
    if family == "sdxl_refiner":
        return {"conditioner.embedders.0.model.ln_final.weight": torch.ones(POOLED_SDXL)}
    return {
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(32),
        "conditioner.embedders.1.model.ln_final.weight": torch.ones(POOLED_SDXL),
        "conditioner.embedders.1.model.text_projection": torch.zeros(POOLED_SDXL, POOLED_SDXL),
    }


def checkpoint_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    sd = {f"model.diffusion_model.{k}": v for k, v in unet_weights(family, seed).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in vae_weights(seed + 1).items()})
    sd.update(text_encoder_stub(family))
    return sd


def write_checkpoint(path: Path, family: str, seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    save_file(checkpoint_dict(family, seed), str(path), metadata=metadata)
    return path
