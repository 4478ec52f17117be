"""``comfy.diffusers_convert``: diffusers-layout state dicts to the ldm (single-file) layout.

``convert_vae_state_dict`` renames a diffusers ``AutoencoderKL``'s keys to the ldm names (and
turns the mid-block attention's linear weights into 1x1 convolutions);
``convert_text_enc_state_dict_v20`` turns a transformers OpenCLIP text tower into OpenCLIP's
own layout (fused q/k/v); ``convert_unet_state_dict`` maps a known diffusers UNet (SD1.x, SD2.x,
SDXL...) to the ldm keys. ``convert_text_enc_state_dict`` returns its input (CLIP-L keeps the
transformers layout in checkpoints).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _vae_renames() -> list[tuple[str, str]]:
    """(ldm, diffusers) key fragments, applied in order."""
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(4):
        for j in range(2):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            # diffusers numbers the decoder's levels from the bottom, ldm from the top.
            pairs.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            pairs.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    return pairs


vae_conversion_map = _vae_renames()
vae_conversion_map_attn = [
    ("norm.", "group_norm."),
    ("q.", "query."),
    ("k.", "key."),
    ("v.", "value."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
    ("proj_out.", "proj_attn."),
]


def reshape_weight_for_sd(w: torch.Tensor, conv3d: bool = False) -> torch.Tensor:
    """A linear weight as the equivalent 1x1 (x1) convolution weight."""
    return w.reshape(*w.shape, 1, 1, 1) if conv3d else w.reshape(*w.shape, 1, 1)


def convert_vae_state_dict(vae_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict with ldm key names (a new dict; tensors are shared)."""
    names: dict[str, str] = {}
    conv3d = False
    for key in vae_state_dict:
        name = key
        for ldm, diffusers in vae_conversion_map:
            name = name.replace(diffusers, ldm)
        if name.endswith(".conv.weight") and vae_state_dict[key].ndim == 5:
            conv3d = True
        if "attentions" in key:
            for ldm, diffusers in vae_conversion_map_attn:
                name = name.replace(diffusers, ldm)
        names[key] = name
    out = {name: vae_state_dict[key] for key, name in names.items()}
    for name, tensor in out.items():
        if any(f"mid.attn_1.{w}.weight" in name for w in ("q", "k", "v", "proj_out")) and tensor.ndim == 2:
            out[name] = reshape_weight_for_sd(tensor, conv3d=conv3d)
    return out


# (OpenCLIP, transformers) fragments of the text tower's key names.
textenc_conversion_lst = [
    ("resblocks.", "text_model.encoder.layers."),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    (".c_fc.", ".fc1."),
    (".c_proj.", ".fc2."),
    (".attn", ".self_attn"),
    ("ln_final.", "transformer.text_model.final_layer_norm."),
    ("token_embedding.weight", "transformer.text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "transformer.text_model.embeddings.position_embedding.weight"),
]
protected = {re.escape(hf): ours for ours, hf in textenc_conversion_lst}
textenc_pattern = re.compile("|".join(protected))
code2idx = {"q": 0, "k": 1, "v": 2}


def _relabel(key: str) -> str:
    return textenc_pattern.sub(lambda m: protected[re.escape(m.group(0))], key)


def cat_tensors(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0 by copying (works for dtypes ``torch.cat`` lacks on some devices)."""
    out = torch.empty([sum(t.shape[0] for t in tensors), *tensors[0].shape[1:]], device=tensors[0].device, dtype=tensors[0].dtype)
    start = 0
    for t in tensors:
        out[start : start + t.shape[0]] = t
        start += t.shape[0]
    return out


def convert_text_enc_state_dict_v20(text_enc_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A transformers-layout OpenCLIP text tower (keys under ``prefix``) in OpenCLIP's layout."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], list[torch.Tensor | None]] = {}
    projection = "transformer.text_projection.weight"
    for key, value in text_enc_dict.items():
        if not key.startswith(prefix):
            continue
        match = re.search(r"\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if match:
            base = key[: match.start()] + ".self_attn"
            fused.setdefault((base, match.group(2)), [None, None, None])[code2idx[match.group(1)]] = value
        elif key.endswith(projection):
            out[key.replace(projection, "text_projection")] = value.transpose(0, 1).contiguous()
        else:
            out[_relabel(key)] = value
    for (base, kind), parts in fused.items():
        if any(p is None for p in parts):
            raise ValueError("CORRUPTED MODEL: one of the q-k-v values for the text encoder was missing")
        out[f"{_relabel(base)}.in_proj_{kind}"] = cat_tensors([p for p in parts if p is not None])
    return out


def convert_text_enc_state_dict(text_enc_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return text_enc_dict


def convert_unet_state_dict(unet_state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A known diffusers UNet's state dict with ldm key names; ``ValueError`` for an unknown one."""
    import comfy.model_detection
    import comfy.utils

    config = comfy.model_detection.unet_config_from_diffusers_unet(unet_state_dict)
    if config is None:
        raise ValueError("not a diffusers UNet layout comfy.diffusers_convert knows")
    mapping = comfy.utils.unet_to_diffusers(config)
    return {mapping[k]: v for k, v in unet_state_dict.items() if k in mapping}


def load_diffusers(model_path: str, fp16: bool = False, output_vae: bool = True, output_clip: bool = True, embedding_directory: Any = None) -> tuple[Any, Any, Any]:
    """The older home of :func:`comfy.diffusers_load.load_diffusers` (``fp16`` is ignored: weights
    load at the server's compute dtype)."""
    import comfy.diffusers_load

    return comfy.diffusers_load.load_diffusers(model_path, output_vae=output_vae, output_clip=output_clip, embedding_directory=embedding_directory)
