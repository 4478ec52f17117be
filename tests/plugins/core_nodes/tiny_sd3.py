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


# --- a whole tiny SD3.5 (MMDiT, CLIP-L, CLIP-G, T5-XXL, VAE) for end-to-end runs ---------------------

# CLIP widths are tiny; the MMDiT's text width is the reference's fixed 4096 (CLIP outputs are
# zero-padded to it and T5 is joined on the token axis), so the tiny T5 is 4096 wide with a short
# vocabulary: prompts must use token ids below T5_VOCAB.
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_VOCAB = 64, 128, 1024
E2E = replace(
    TINY_SD35_MEDIUM,
    depth=3,
    adm_in_channels=CLIP_L_WIDTH + CLIP_G_WIDTH,
    context_in_dim=4096,
    pos_embed_max_size=16,
    x_block_self_attn_layers=(0,),
)


def hf_clip(width: int, seed: int, large: bool) -> Any:
    """transformers' CLIPTextModelWithProjection, random, full CLIP vocabulary. CLIP-L's projection
    is the identity: the reference pools CLIP-L unprojected for SD3 while diffusers projects it."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=max(1, width // 64), max_position_embeddings=77, projection_dim=width,
        hidden_act="quick_gelu" if large else "gelu", bos_token_id=49406, eos_token_id=49407,
    )  # fmt: skip
    model = transformers.CLIPTextModelWithProjection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
        if large:
            model.text_projection.weight.copy_(torch.eye(width))
    return model


def hf_t5(seed: int) -> Any:
    """transformers' T5EncoderModel, random, 4096 wide with a short vocabulary."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=T5_VOCAB, d_model=4096, d_kv=16, d_ff=32, num_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )  # fmt: skip
    model = transformers.T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A transformers model's weights as the reference's text-encoder files hold them."""
    return {
        k: v.detach().clone().contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("position_ids") and k != "encoder.embed_tokens.weight"
    }


def vae16_weights(seed: int = 9) -> dict[str, torch.Tensor]:
    """A 16-channel autoencoder (four levels: latents at 1/8) in the single-file layout."""
    from plugins.core_nodes.models.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(seed)
    vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16, use_quant_conv=False))
    return {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}


def sd3_checkpoint(
    mmdit: dict[str, torch.Tensor], clip_l: Any, clip_g: Any, t5: Any | None
) -> dict[str, torch.Tensor]:
    """A full SD3 checkpoint in the reference's single-file layout (T5 left out when None)."""
    sd = {f"model.diffusion_model.{k}": v for k, v in mmdit.items()}
    sd.update({f"first_stage_model.{k}": v for k, v in vae16_weights().items()})
    parts = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5}
    for name, model in parts.items():
        if model is not None:
            sd.update({f"text_encoders.{name}.transformer.{k}": v for k, v in hf_state_dict(model).items()})
    return sd


def hf_clip_tokenizer(folder: Any, pad_token: str) -> Any:
    """transformers' CLIPTokenizer over the vendored CLIP vocabulary (vocab.json / merges.txt
    written from it), padding with ``pad_token`` as the reference's SD3 tokenizers do."""
    import gzip
    import json

    import transformers

    from plugins.core_nodes.models.tokenizer import VOCAB_PATH, default_bpe

    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(default_bpe().vocab), encoding="utf-8")
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
    )


def hf_t5_tokenizer(folder: Any) -> Any:
    import shutil

    import transformers

    from plugins.core_nodes.models.t5_tokenizer import SPIECE_PATH

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SPIECE_PATH, folder / "spiece.model")
    return transformers.T5Tokenizer.from_pretrained(str(folder), legacy=True)
