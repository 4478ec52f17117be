"""``comfy.model_detection``: read a UNet's configuration off its state dict.

Covers the ldm UNet layout (SD1.x, SD2.x, SDXL and their variants: ``input_blocks`` /
``middle_block`` / ``output_blocks``) the reference's way, key for key, so a pack comparing
``detect_unet_config`` output with its own tables sees the same dicts; and the diffusers UNet
layout through the reference's table of known diffusers configs. Transformer (DiT) families are
not detected here: ``detect_unet_config`` gives None for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import comfy.supported_models
import comfy.supported_models_base
import torch

log = logging.getLogger("comfykernel.compat")


def count_blocks(state_dict_keys: Iterable[str], prefix_string: str) -> int:
    """How many consecutive ``prefix_string.format(i)`` prefixes (i = 0, 1, ...) some key has."""
    keys = list(state_dict_keys)
    count = 0
    while any(k.startswith(prefix_string.format(count)) for k in keys):
        count += 1
    return count


def any_suffix_in(keys: Iterable[str], prefix: str, main: str, suffix_list: Iterable[str] = ()) -> bool:
    keys = set(keys)
    return any(f"{prefix}{main}{suffix}" in keys for suffix in suffix_list)


def calculate_transformer_depth(
    prefix: str, state_dict_keys: list[str], state_dict: Mapping[str, Any]
) -> tuple[int, int, bool, bool, bool] | None:
    """``(depth, context_dim, linear_proj, time_stack, time_stack_cross)`` of the spatial
    transformer at ``{prefix}1.``, or None when the block has none."""
    blocks = prefix + "1.transformer_blocks."
    if not any(k.startswith(blocks) for k in state_dict_keys):
        return None
    depth = count_blocks(state_dict_keys, blocks + "{}")
    context_dim = state_dict[f"{blocks}0.attn2.to_k.weight"].shape[1]
    linear = len(state_dict[f"{prefix}1.proj_in.weight"].shape) == 2
    stacks = (f"{prefix}1.time_stack.0.", f"{prefix}1.time_mix_blocks.0.")
    time_stack = any(f"{s}attn1.to_q.weight" in state_dict for s in stacks)
    time_stack_cross = any(f"{s}attn2.to_q.weight" in state_dict for s in stacks)
    return depth, context_dim, linear, time_stack, time_stack_cross


def detect_unet_config(state_dict: Mapping[str, Any], key_prefix: str, metadata: Any = None) -> dict[str, Any] | None:
    """The UNet config of the ldm-layout UNet under ``key_prefix``, or None when there is none."""
    keys = list(state_dict.keys())
    if f"{key_prefix}input_blocks.0.0.weight" not in state_dict:
        return None
    config: dict[str, Any] = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False}
    y_input = f"{key_prefix}label_emb.0.0.weight"
    if y_input in state_dict:
        config["num_classes"] = "sequential"
        config["adm_in_channels"] = state_dict[y_input].shape[1]
    else:
        config["adm_in_channels"] = None

    conv_in = state_dict[f"{key_prefix}input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    out_key = f"{key_prefix}out.2.weight"
    out_channels = state_dict[out_key].shape[0] if out_key in state_dict else 4

    num_res_blocks: list[int] = []
    channel_mult: list[int] = []
    depth_in: list[int] = []
    depth_out: list[int] = []
    context_dim = None
    linear = video = video_cross = False
    level_blocks = level_mult = 0

    count = count_blocks(keys, key_prefix + "input_blocks.{}.")
    for i in range(count):
        prefix = f"{key_prefix}input_blocks.{i}."
        # The output block mirrored to this input block (output blocks run in reverse).
        prefix_out = f"{key_prefix}output_blocks.{count - i - 1}."
        block_keys = [k for k in keys if k.startswith(prefix)]
        if not block_keys:
            break
        out_keys = {k for k in keys if k.startswith(prefix_out)}
        if f"{prefix}0.op.weight" in block_keys:
            # A downsampler closes the level.
            num_res_blocks.append(level_blocks)
            channel_mult.append(level_mult)
            level_blocks = level_mult = 0
            found = calculate_transformer_depth(prefix_out, keys, state_dict)
            depth_out.append(found[0] if found else 0)
            continue
        if f"{prefix}0.in_layers.0.weight" in block_keys:
            level_blocks += 1
            level_mult = state_dict[f"{prefix}0.out_layers.3.weight"].shape[0] // model_channels
            found = calculate_transformer_depth(prefix, keys, state_dict)
            depth_in.append(found[0] if found else 0)
            if found and context_dim is None:
                _, context_dim, linear, video, video_cross = found
        if f"{prefix_out}0.in_layers.0.weight" in out_keys:
            found = calculate_transformer_depth(prefix_out, keys, state_dict)
            depth_out.append(found[0] if found else 0)

    num_res_blocks.append(level_blocks)
    channel_mult.append(level_mult)
    if f"{key_prefix}middle_block.1.proj_in.weight" in state_dict:
        depth_mid = count_blocks(keys, f"{key_prefix}middle_block.1.transformer_blocks." + "{}")
    elif f"{key_prefix}middle_block.0.in_layers.0.weight" in state_dict:
        depth_mid = -1
    else:
        depth_mid = -2

    config.update(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        num_res_blocks=num_res_blocks,
        transformer_depth=depth_in,
        transformer_depth_output=depth_out,
        channel_mult=channel_mult,
        transformer_depth_middle=depth_mid,
        use_linear_in_transformer=linear,
        context_dim=context_dim,
    )
    if video:
        config.update(
            extra_ff_mix_layer=True,
            use_spatial_context=True,
            merge_strategy="learned_with_images",
            merge_factor=0.0,
            video_kernel_size=[3, 1, 1],
            use_temporal_resblock=True,
            use_temporal_attention=True,
            disable_temporal_crossattention=not video_cross,
        )
    else:
        config.update(use_temporal_resblock=False, use_temporal_attention=False)
    if f"{key_prefix}heatmap_head.conv_layers.0.weight" in state_dict:
        config["heatmap_head"] = True
    return config


def model_config_from_unet_config(unet_config: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None) -> Any:
    """An instance of the first ``comfy.supported_models.models`` class matching ``unet_config``."""
    for model_config in comfy.supported_models.models:
        if model_config.matches(unet_config, state_dict):
            return model_config(unet_config)
    log.error("no match %s", unet_config)
    return None


def model_config_from_unet(
    state_dict: Mapping[str, Any], unet_key_prefix: str, use_base_if_no_match: bool = False, metadata: Any = None
) -> Any:
    """The family config of the UNet under ``unet_key_prefix`` (``BASE`` when nothing matches and
    ``use_base_if_no_match``), or None."""
    unet_config = detect_unet_config(state_dict, unet_key_prefix, metadata=metadata)
    if unet_config is None:
        return None
    config = model_config_from_unet_config(unet_config, state_dict)
    if config is None and use_base_if_no_match:
        config = comfy.supported_models_base.BASE(unet_config)
    return config


def unet_prefix_from_state_dict(state_dict: Mapping[str, Any]) -> str:
    """Where a checkpoint keeps its diffusion model's keys (``"model."`` when unclear)."""
    if any(k.startswith("detector.") for k in state_dict) and any(k.startswith("tracker.") for k in state_dict):
        return ""
    candidates = ("model.diffusion_model.", "model.model.", "net.")
    counts = dict.fromkeys(candidates, 0)
    for key in state_dict:
        for candidate in candidates:
            if key.startswith(candidate):
                counts[candidate] += 1
                break
    top = max(counts, key=counts.__getitem__)
    return top if counts[top] > 5 else "model."


def convert_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A config with ``attention_resolutions`` / scalar depths expanded to the per-block lists
    (``transformer_depth``, ``transformer_depth_output``, ``num_res_blocks``) the UNet takes."""
    config = dict(unet_config)
    res_blocks = config.get("num_res_blocks")
    channel_mult = config.get("channel_mult")
    if isinstance(res_blocks, int):
        res_blocks = len(channel_mult) * [res_blocks]
    if "attention_resolutions" in config:
        resolutions = config.pop("attention_resolutions")
        depth = config.get("transformer_depth")
        depth_mid = config.get("transformer_depth_middle")
        if isinstance(depth, int):
            depth = len(channel_mult) * [depth]
        if depth_mid is None:
            depth_mid = depth[-1]
        t_in: list[int] = []
        t_out: list[int] = []
        scale = 1
        for level, blocks in enumerate(res_blocks):
            d = depth[level] if scale in resolutions else 0
            t_in += [d] * blocks
            t_out += [d] * (blocks + 1)
            scale *= 2
        config["transformer_depth"] = t_in
        config["transformer_depth_output"] = t_out
        config["transformer_depth_middle"] = depth_mid
    config["num_res_blocks"] = res_blocks
    return config


def _known_diffusers_unets(dtype: Any) -> list[dict[str, Any]]:
    """The diffusers UNets the reference recognises, as full ldm configs (published facts)."""
    common = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
              "dtype": dtype, "use_temporal_attention": False, "use_temporal_resblock": False}
    sd15 = {**common, "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
            "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    sd21 = {**sd15, "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64}
    del sd21["num_heads"]
    sdxl = {**common, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
            "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
            "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
    refiner = {**sdxl, "adm_in_channels": 2560, "model_channels": 384, "num_res_blocks": [2, 2, 2, 2],
               "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 4,
               "context_dim": 1280, "transformer_depth_output": [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0]}
    lotus = {**sd21, "adm_in_channels": 4}
    return [
        lotus,
        sdxl,
        refiner,
        sd21,
        sd15,
        {**sd21, "num_classes": "sequential", "adm_in_channels": 2048},
        {**sd21, "num_classes": "sequential", "adm_in_channels": 1536},
        {**sdxl, "transformer_depth": [0, 0, 0, 0, 1, 1], "transformer_depth_middle": 1,
         "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1]},
        {**sdxl, "transformer_depth": [0, 0, 0, 0, 0, 0], "transformer_depth_middle": 0, "context_dim": 1,
         "transformer_depth_output": [0, 0, 0, 0, 0, 0, 0, 0, 0]},
        {**sdxl, "in_channels": 9},
        {**sdxl, "transformer_depth": [0, 0, 2, 2, 4, 4], "transformer_depth_middle": -1,
         "transformer_depth_output": [0, 0, 0, 1, 1, 2, 10, 4, 4]},
        {**sdxl, "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": -1,
         "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]},
        {**sdxl, "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 2, 5], "transformer_depth_middle": -2,
         "transformer_depth_output": [0, 0, 2, 2, 5, 5]},
        {**sdxl, "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 2, 6], "transformer_depth_middle": 6,
         "transformer_depth_output": [0, 0, 2, 2, 6, 6]},
        {**sd21, "num_res_blocks": [1, 1, 1], "transformer_depth": [1, 1, 1], "channel_mult": [1, 2, 4],
         "transformer_depth_middle": -2, "transformer_depth_output": [1, 1, 1, 1, 1, 1]},
        {**sd21, "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 1, 1], "channel_mult": [1, 2, 4],
         "transformer_depth_middle": -2, "use_linear_in_transformer": False, "context_dim": 768,
         "transformer_depth_output": [0, 0, 1, 1, 1, 1]},
        {**sdxl, "in_channels": 8},
        {**sd15, "in_channels": 9},
    ]


def unet_config_from_diffusers_unet(state_dict: Mapping[str, Any], dtype: torch.dtype | None = None) -> dict[str, Any] | None:
    """The ldm UNet config for a diffusers-layout UNet state dict, when it is one of the known
    diffusers UNets (SD1.5, SD2.1, SDXL, the refiner and their common variants); else None."""
    if "conv_in.weight" not in state_dict:
        return None
    found: dict[str, Any] = {}
    depth: list[int] = []
    for level in range(count_blocks(state_dict, "down_blocks.{}")):
        attentions = count_blocks(state_dict, f"down_blocks.{level}.attentions." + "{}")
        resnets = count_blocks(state_dict, f"down_blocks.{level}.resnets." + "{}")
        for a in range(attentions):
            blocks = count_blocks(state_dict, f"down_blocks.{level}.attentions.{a}.transformer_blocks." + "{}")
            depth.append(blocks)
            if blocks > 0:
                found["context_dim"] = state_dict[f"down_blocks.{level}.attentions.{a}.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        if attentions == 0:
            depth += [0] * resnets
    found["transformer_depth"] = depth
    found["model_channels"] = state_dict["conv_in.weight"].shape[0]
    found["in_channels"] = state_dict["conv_in.weight"].shape[1]
    found["adm_in_channels"] = None
    for key in ("class_embedding.linear_1.weight", "add_embedding.linear_1.weight"):
        if key in state_dict:
            found["adm_in_channels"] = state_dict[key].shape[1]
            break
    for known in _known_diffusers_unets(dtype):
        if all(known.get(k, object()) == v for k, v in found.items()):
            return convert_config(known)
    return None


def model_config_from_diffusers_unet(state_dict: Mapping[str, Any]) -> Any:
    unet_config = unet_config_from_diffusers_unet(state_dict)
    return model_config_from_unet_config(unet_config) if unet_config is not None else None
