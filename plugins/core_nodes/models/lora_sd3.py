"""LoRA keys of SD3 / SD3.5's MMDiT (the reference's single-file layout).

SD3 LoRAs come in two namings:

* the single-file names (kohya's ``lora_unet_joint_blocks_0_x_block_attn_qkv``, the generic
  ``diffusion_model.joint_blocks.0.x_block.attn.qkv``): one of our modules;
* diffusers' ``SD3Transformer2DModel`` names, as diffusers / PEFT (``transformer.``), the
  reference's ``base_model.model.`` form, OneTrainer (``lora_transformer_``) and SimpleTuner's
  LyCORIS (``lycoris_``) spell them. diffusers keeps each attention's q, k and v as separate
  layers (``attn.to_q`` for the image tokens, ``attn.add_q_proj`` for the text tokens,
  ``attn2.to_q`` for SD3.5 medium's second image attention) where ours are one fused ``qkv``:
  each names a block of rows of it. diffusers also keeps two modulations as (scale, shift) where
  ours keep (shift, scale): the final layer's and the last block's pre-only text modulation.

The diffusers-to-ours facts are the reference's (``mmdit_to_diffusers``); the key maps and the
fusing of row blocks into one change per weight (at resolve time) are :mod:`.lora_fused`'s,
shared with Flux.
"""

from __future__ import annotations

from torch import nn

from .lora_fused import RowBlock, key_maps, spellings
from .mmdit import MMDiTConfig

__all__ = ["diffusers_targets", "is_sd3_network", "sd3_key_map", "sd3_slice_map"]

# The reference's SD3 LoRA prefixes beside diffusers' own: flash-sd3-style PEFT dumps.
_DOTTED = ("transformer.", "base_model.model.")

# diffusers' name -> ours, inside one joint block (whole modules).
_BLOCK_LAYERS = (
    ("attn.to_out.0", "x_block.attn.proj"),
    ("attn.to_add_out", "context_block.attn.proj"),
    ("attn2.to_out.0", "x_block.attn2.proj"),
    ("norm1.linear", "x_block.adaLN_modulation.1"),
    ("ff.net.0.proj", "x_block.mlp.fc1"),
    ("ff.net.2", "x_block.mlp.fc2"),
    ("ff_context.net.0.proj", "context_block.mlp.fc1"),
    ("ff_context.net.2", "context_block.mlp.fc2"),
    ("attn.norm_q", "x_block.attn.ln_q"),
    ("attn.norm_k", "x_block.attn.ln_k"),
    ("attn.norm_added_q", "context_block.attn.ln_q"),
    ("attn.norm_added_k", "context_block.attn.ln_k"),
    ("attn2.norm_q", "x_block.attn2.ln_q"),
    ("attn2.norm_k", "x_block.attn2.ln_k"),
)
# diffusers' separate q / k / v per attention -> our fused qkv.
_QKV = (
    ("attn", ("to_q", "to_k", "to_v"), "x_block.attn.qkv"),
    ("attn", ("add_q_proj", "add_k_proj", "add_v_proj"), "context_block.attn.qkv"),
    ("attn2", ("to_q", "to_k", "to_v"), "x_block.attn2.qkv"),
)
_GLOBAL_LAYERS = (
    ("pos_embed.proj", "x_embedder.proj"),
    ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
    ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
    ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
    ("context_embedder", "context_embedder"),
    ("proj_out", "final_layer.linear"),
)


def is_sd3_network(net: nn.Module | None) -> bool:
    return isinstance(getattr(net, "config", None), MMDiTConfig)


def diffusers_targets(config: MMDiTConfig) -> dict[str, RowBlock]:
    """diffusers' module names -> the block of one of our weights each one is (names of layers a
    variant lacks are listed too; :func:`.lora_fused.key_maps` leaves them out)."""
    h = config.hidden_size
    out: dict[str, RowBlock] = {}
    for i in range(config.depth):
        ours, theirs = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        for attn, names, fused in _QKV:
            for n, name in enumerate(names):
                out[f"{theirs}{attn}.{name}"] = RowBlock(ours + fused, n * h, h)
        for theirs_name, ours_name in _BLOCK_LAYERS:
            out[theirs + theirs_name] = RowBlock(ours + ours_name)
        # The last block's text half is pre-only: diffusers' continuous norm there is (scale, shift).
        last = i == config.depth - 1
        out[theirs + "norm1_context.linear"] = RowBlock(ours + "context_block.adaLN_modulation.1", swap=last)
    for theirs_name, ours_name in _GLOBAL_LAYERS:
        out[theirs_name] = RowBlock(ours_name)
    out["norm_out.linear"] = RowBlock("final_layer.adaLN_modulation.1", swap=True)
    return out


def _spell(name: str) -> tuple[str, ...]:
    return spellings(name, _DOTTED)


def _maps(net: nn.Module) -> tuple[dict[str, str], dict[str, RowBlock]]:
    config: MMDiTConfig = net.config  # type: ignore[assignment]
    return key_maps(net, diffusers_targets(config), _spell)


def sd3_key_map(net: nn.Module) -> dict[str, str]:
    """LoRA module keys that name one whole module of ``net`` -> our module name."""
    return _maps(net)[0]


def sd3_slice_map(net: nn.Module) -> dict[str, RowBlock]:
    """LoRA module keys that name a block of rows of a fused qkv (or a swapped modulation)."""
    return _maps(net)[1]

