"""Test helpers: a tiny random Flux transformer in the reference's single-file layout, and the same
weights in diffusers' ``FluxTransformer2DModel`` layout.

diffusers' own single-file conversion (``convert_flux_transformer_checkpoint_to_diffusers``) has
the full model's width (3072) built in, so the renaming is written out here from the two layouts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import FluxTransformer2DModel

from plugins.core_nodes.models.flux import FluxConfig, FluxTransformer

TINY = FluxConfig(
    in_channels=64, out_channels=64, vec_in_dim=24, context_in_dim=32, hidden_size=32, mlp_hidden=128,
    num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6), guidance_embed=True,
)  # fmt: skip


def tiny_flux_weights(config: FluxConfig = TINY, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """Random weights (std 0.2) for ``config`` in the reference's layout, under ``prefix``."""
    torch.manual_seed(seed)
    model = FluxTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return {prefix + k: v.clone() for k, v in model.state_dict().items()}


def _mlp_pair(out: dict[str, torch.Tensor], sd: Mapping[str, torch.Tensor], src: str, dst: str) -> None:
    for a, b in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
        for p in ("weight", "bias"):
            out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]


def to_diffusers(sd: Mapping[str, torch.Tensor], config: FluxConfig = TINY) -> dict[str, torch.Tensor]:
    """The reference layout renamed (and q/k/v split) for ``FluxTransformer2DModel``."""
    h = config.hidden_size
    out: dict[str, torch.Tensor] = {}

    def copy(src: str, dst: str) -> None:
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                out[f"{dst}.{p}"] = sd[f"{src}.{p}"]

    def split(src: str, dsts: list[str], sizes: list[int]) -> None:
        for p in ("weight", "bias"):
            for dst, part in zip(dsts, torch.split(sd[f"{src}.{p}"], sizes), strict=True):
                out[f"{dst}.{p}"] = part

    copy("img_in", "x_embedder")
    copy("txt_in", "context_embedder")
    _mlp_pair(out, sd, "time_in", "time_text_embed.timestep_embedder")
    _mlp_pair(out, sd, "vector_in", "time_text_embed.text_embedder")
    if config.guidance_embed:
        _mlp_pair(out, sd, "guidance_in", "time_text_embed.guidance_embedder")
    for i in range(config.depth):
        s, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        copy(f"{s}.img_mod.lin", f"{d}.norm1.linear")
        copy(f"{s}.txt_mod.lin", f"{d}.norm1_context.linear")
        split(f"{s}.img_attn.qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], [h, h, h])
        split(f"{s}.txt_attn.qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], [h, h, h])
        out[f"{d}.attn.norm_q.weight"] = sd[f"{s}.img_attn.norm.query_norm.scale"]
        out[f"{d}.attn.norm_k.weight"] = sd[f"{s}.img_attn.norm.key_norm.scale"]
        out[f"{d}.attn.norm_added_q.weight"] = sd[f"{s}.txt_attn.norm.query_norm.scale"]
        out[f"{d}.attn.norm_added_k.weight"] = sd[f"{s}.txt_attn.norm.key_norm.scale"]
        copy(f"{s}.img_attn.proj", f"{d}.attn.to_out.0")
        copy(f"{s}.txt_attn.proj", f"{d}.attn.to_add_out")
        copy(f"{s}.img_mlp.0", f"{d}.ff.net.0.proj")
        copy(f"{s}.img_mlp.2", f"{d}.ff.net.2")
        copy(f"{s}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        copy(f"{s}.txt_mlp.2", f"{d}.ff_context.net.2")
    for i in range(config.depth_single_blocks):
        s, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        copy(f"{s}.modulation.lin", f"{d}.norm.linear")
        split(
            f"{s}.linear1",
            [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"],
            [h, h, h, config.mlp_hidden],
        )
        copy(f"{s}.linear2", f"{d}.proj_out")
        out[f"{d}.attn.norm_q.weight"] = sd[f"{s}.norm.query_norm.scale"]
        out[f"{d}.attn.norm_k.weight"] = sd[f"{s}.norm.key_norm.scale"]
    # The reference's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift).
    for p in ("weight", "bias"):
        shift, scale = sd[f"final_layer.adaLN_modulation.1.{p}"].chunk(2, dim=0)
        out[f"norm_out.linear.{p}"] = torch.cat([scale, shift], dim=0)
    copy("final_layer.linear", "proj_out")
    return out


def diffusers_flux(sd: Mapping[str, torch.Tensor], config: FluxConfig = TINY) -> FluxTransformer2DModel:
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=config.in_channels, num_layers=config.depth,
        num_single_layers=config.depth_single_blocks, attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads, joint_attention_dim=config.context_in_dim,
        pooled_projection_dim=config.vec_in_dim, guidance_embeds=config.guidance_embed,
        axes_dims_rope=config.axes_dim,
    )  # fmt: skip
    model.load_state_dict(to_diffusers(sd, config), strict=True)
    return model.eval()
