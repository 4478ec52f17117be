"""``comfy.diffusers_load``: load a diffusers model folder (``unet/``, ``vae/``, ``text_encoder*/``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import comfy.sd
import comfy.utils

_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
_TEXT_WEIGHTS = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")


def first_file(path: str, filenames: Sequence[str]) -> str | None:
    """The first of ``filenames`` that exists in ``path``."""
    for name in filenames:
        candidate = os.path.join(path, name)
        if os.path.exists(candidate):
            return candidate
    return None


def load_diffusers(
    model_path: str, output_vae: bool = True, output_clip: bool = True, embedding_directory: Any = None
) -> tuple[Any, Any, Any]:
    """``(MODEL, CLIP or None, VAE or None)`` from a diffusers folder, through :mod:`comfy.sd`."""
    unet_path = first_file(os.path.join(model_path, "unet"), _WEIGHTS)
    if unet_path is None:
        raise FileNotFoundError(f"comfy.diffusers_load: no unet weights in {model_path!r}")
    unet = comfy.sd.load_diffusion_model(unet_path)
    clip = None
    if output_clip:
        paths = [p for p in (first_file(os.path.join(model_path, d), _TEXT_WEIGHTS) for d in ("text_encoder", "text_encoder_2")) if p]
        clip = comfy.sd.load_clip(paths, embedding_directory=embedding_directory)
    vae = None
    if output_vae:
        vae_path = first_file(os.path.join(model_path, "vae"), _WEIGHTS)
        if vae_path is None:
            raise FileNotFoundError(f"comfy.diffusers_load: no vae weights in {model_path!r}")
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    return unet, clip, vae
