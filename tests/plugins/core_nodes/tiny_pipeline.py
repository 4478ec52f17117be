"""Complete tiny SD1 / SDXL checkpoints (UNet, VAE and real text encoders) in the single-file layout.

Unlike :mod:`tiny_sd`'s stubs, the text encoders here are whole (narrow, two-layer) CLIP models
with the full vocabulary, so a checkpoint written here runs the reference's default workflow end
to end. The VAE has four levels, so its latents are 1/8 of the image like the real one's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from plugins.core_nodes.models.clip import ClipTextConfig, ClipTextModel
from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetConfig, UNetModel
from plugins.core_nodes.models.vae import AutoencoderKL, VAEConfig

from . import tiny_sd

CLIP_WIDTH = 64
CLIP_L = ClipTextConfig(width=64, layers=2, heads=1, mlp_width=128)
CLIP_G = ClipTextConfig(width=64, layers=2, heads=1, mlp_width=128, activation="gelu", projection_dim=64)
UNETS: dict[str, UNetConfig] = {
    "sd1": replace(tiny_sd.UNET_CONFIGS["sd1"], context_dim=CLIP_WIDTH),
    "sdxl": replace(
        tiny_sd.UNET_CONFIGS["sdxl"],
        context_dim=2 * CLIP_WIDTH,
        adm_in_channels=CLIP_G.projection_dim + 6 * ADM_SCALAR_DIM,  # type: ignore[operator]
    ),
}
VAE = VAEConfig(ch=16, ch_mult=(1, 1, 1, 1), num_res_blocks=1)


def _weights(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    return tiny_sd._randomize(module, seed)


def clip_weights(config: ClipTextConfig, seed: int) -> dict[str, torch.Tensor]:
    """Our (transformers-minus-``text_model.``) layout."""
    torch.manual_seed(seed)
    return _weights(ClipTextModel(config), seed)


def to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our layout -> the OpenCLIP text tower layout SDXL checkpoints store OpenCLIP-G in."""
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
    }
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    renames = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            for theirs, ours in renames.items():
                out[dst + f"{ours}.{kind}"] = sd[src + f"{theirs}.{kind}"]
    return out


def checkpoint_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    unet = _weights(UNetModel(UNETS[family]), seed)
    torch.manual_seed(seed + 1)
    vae = _weights(AutoencoderKL(VAE), seed + 1)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    clip_l = clip_weights(CLIP_L, seed + 2)
    if family == "sd1":
        sd.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in clip_l.items()})
    else:
        sd.update({f"conditioner.embedders.0.transformer.text_model.{k}": v for k, v in clip_l.items()})
        clip_g = to_openclip(clip_weights(CLIP_G, seed + 3))
        sd.update({f"conditioner.embedders.1.model.{k}": v for k, v in clip_g.items()})
    return sd


def write_checkpoint(path: Path, family: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_dict(family, seed), str(path))
    return path
