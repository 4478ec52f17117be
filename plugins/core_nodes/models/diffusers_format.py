"""diffusers model folders (``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``) for
DiffusersLoader.

The UNet's keys are renamed to the single-file layout (``input_blocks.N.M``, ``middle_block``,
``output_blocks``) with the block numbering worked out from the folder's own blocks, so any
SD1 / SD2 / SDXL-shaped UNet converts, test-sized ones included; then it is built and detected as
a checkpoint's UNet is. The VAE loader reads the diffusers layout itself; the text encoders
are transformers files, loaded by role as CLIPLoader's files are (``text_encoder`` is CLIP-L, or
OpenCLIP-H when 1024 wide; ``text_encoder_2`` is SDXL's OpenCLIP-G). A ``scheduler`` asking for
``v_prediction`` makes the model a v-prediction one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models import checkpoint as ckpt
from plugins.core_nodes.models.text_encoder import load_state_dict_file, stack_from_encoder_files
from plugins.core_nodes.models.unet import build_unet

# Weight files of a component folder, preferred first (the reference's order).
WEIGHT_FILES = (
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.bin",
    "diffusion_pytorch_model.bin",
)
TEXT_WEIGHT_FILES = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # The ADM input: SDXL's size / pooled-text embedding (unCLIP's image embedding in class_embedding).
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


class DiffusersError(ValueError):
    """A diffusers folder this server cannot load."""


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET:
        raise DiffusersError(f"unknown resnet weight {rest!r}")
    return f"{_RESNET[head]}.{tail}"


def unet_to_single_file(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict with the single-file UNet names."""
    if "conv_in.weight" not in sd:
        raise DiffusersError("not a diffusers UNet: no conv_in weights")
    levels = _count(sd, "down_blocks")
    # First input block of each level, and the first output block of each up level.
    starts, block = [], 1
    for level in range(levels):
        starts.append(block)
        block += _count(sd, f"down_blocks.{level}.resnets") + (1 if _count(sd, f"down_blocks.{level}.downsamplers") else 0)
    up_starts, block = [], 0
    for level in range(_count(sd, "up_blocks")):
        up_starts.append(block)
        block += _count(sd, f"up_blocks.{level}.resnets")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[_rename(key, sd, starts, up_starts)] = value
    return out


def _rename(key: str, sd: Mapping[str, Any], starts: list[int], up_starts: list[int]) -> str:
    for old, new in _TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    mid = _MID.match(key)
    if mid:
        kind, index, rest = mid.group(1), int(mid.group(2)), mid.group(3)
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_resnet(rest)}"
    found = _BLOCK.match(key)
    if not found:
        raise DiffusersError(f"unknown UNet weight {key!r}")
    side, level, kind, index, rest = found.group(1), int(found.group(2)), found.group(3), int(found.group(4)), found.group(5)
    if side == "down_blocks":
        if kind == "downsamplers":
            number = starts[level] + _count(sd, f"down_blocks.{level}.resnets")
            return f"input_blocks.{number}.0.{rest.replace('conv.', 'op.', 1)}"
        number = starts[level] + index
        return f"input_blocks.{number}.{'0.' + _resnet(rest) if kind == 'resnets' else '1.' + rest}"
    if kind == "upsamplers":
        number = up_starts[level] + _count(sd, f"up_blocks.{level}.resnets") - 1
        # After the resnet and, when the level has attention, the transformer.
        slot = 2 if _count(sd, f"up_blocks.{level}.attentions") else 1
        return f"output_blocks.{number}.{slot}.{rest}"
    number = up_starts[level] + index
    return f"output_blocks.{number}.{'0.' + _resnet(rest) if kind == 'resnets' else '1.' + rest}"


def first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _prediction(folder: Path) -> dict[str, str]:
    """The scheduler's prediction type as checkpoint metadata (what family detection reads)."""
    config = folder / "scheduler" / "scheduler_config.json"
    try:
        kind = json.loads(config.read_text()).get("prediction_type")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"modelspec.prediction_type": "v"} if kind == "v_prediction" else {}


def _read_folder(folder: Path, dtype: torch.dtype | None, embeddings: Any) -> Callable[..., adapters.LoadedCheckpoint]:
    def loader(unet_path: Path, check: Callable[[], None]) -> adapters.LoadedCheckpoint:
        name = folder.name
        unet_sd = unet_to_single_file(_read(unet_path))
        check()
        family = ckpt.detect_family(unet_sd, name, unet_sd.keys(), _prediction(folder))
        unet = ckpt._build(name, lambda: build_unet(unet_sd, family.unet_config, dtype))
        vae = None
        vae_path = first_file(folder / "vae", WEIGHT_FILES)
        if vae_path is not None:
            check()
            vae = ckpt.vae_from_state_dict(_read(vae_path), f"{name}/vae", dtype)
        stack, models = None, ()
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for sub in ("text_encoder", "text_encoder_2"):
            path = first_file(folder / sub, TEXT_WEIGHT_FILES)
            if path is not None:
                check()
                parts[sub] = _read(path)
        if parts:
            try:
                stack = stack_from_encoder_files(_roles(parts), embeddings=embeddings)
            except (ValueError, KeyError, RuntimeError) as e:
                raise DiffusersError(f"{name}: text encoders this server does not know ({e})") from None
            models = adapters._cast_stack(stack, dtype)
        return adapters.LoadedCheckpoint(family, unet, vae, stack, models)

    return loader


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except ValueError as e:
        raise DiffusersError(str(e)) from None


def _roles(parts: Mapping[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    first = parts.get("text_encoder")
    if "text_encoder_2" in parts:
        roles = {"g": parts["text_encoder_2"]}
        if first is not None:
            roles["l"] = first
        return roles
    assert first is not None
    width = next((v.shape[-1] for k, v in first.items() if k.endswith("token_embedding.weight")), 0)
    return {"h" if width == 1024 else "l": first}


def load_diffusers(folder: Path) -> tuple[Any, Any, Any]:
    """DiffusersLoader: (MODEL, CLIP or None, VAE or None) from a diffusers folder (cached by the
    model manager on the UNet's weight file; a change to any part reloads it)."""
    folder = Path(folder)
    unet_path = first_file(folder / "unet", WEIGHT_FILES)
    if unet_path is None:
        raise DiffusersError(f"{folder.name} has no unet/ weights ({', '.join(WEIGHT_FILES)})")
    others = [p for p in (first_file(folder / "vae", WEIGHT_FILES),
                          first_file(folder / "text_encoder", TEXT_WEIGHT_FILES),
                          first_file(folder / "text_encoder_2", TEXT_WEIGHT_FILES)) if p is not None]  # fmt: skip
    manager = adapters._manager()
    dtype = adapters._compute_dtype(manager)
    loaded: adapters.LoadedCheckpoint = adapters._load(
        "diffusers", unet_path, _read_folder(folder, dtype, adapters._embedding_lookup()), also=others
    )
    fmt = adapters.latent_format_for(loaded.family.name)
    model = adapters.DiffusionModel(loaded.unet, loaded.family, manager)
    clip = adapters.TextEncoder(loaded.stack, manager) if loaded.stack is not None else None
    vae = adapters.Autoencoder(loaded.vae, fmt, manager) if loaded.vae is not None else None
    return model, clip, vae


__all__ = ["DiffusersError", "first_file", "load_diffusers", "unet_to_single_file"]
