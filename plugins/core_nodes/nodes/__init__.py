"""The core node set, one module per family; :func:`node_classes` lists them for one server.

Importing these modules never imports torch: node functions import it when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.core_nodes.nodes import (
    clip_vision,
    compositing,
    conditioning,
    conditioning_extra,
    conditioning_sdxl,
    context_windows,
    controlnet,
    custom_sampler,
    custom_sampler_extra,
    easycache,
    flux,
    gligen,
    guidance_patches,
    hooks,
    image,
    images_extra,
    io,
    latent,
    latent_files,
    latent_ops,
    loaders,
    logic,
    lora_tools,
    mask,
    model_advanced,
    model_merging,
    model_patch_loaders,
    model_patches,
    morphology,
    photomaker,
    post_processing,
    preview,
    primitives,
    sampling,
    sampling_extra,
    schedulers_extra,
    sd3,
    strings,
    style_model,
    unet_patches,
    upscale,
)
from plugins.core_nodes.nodes.common import KernelNode, bind

if TYPE_CHECKING:
    from kernel import Kernel

FAMILIES = (
    loaders,
    sampling,
    custom_sampler,
    conditioning,
    conditioning_sdxl,
    latent,
    latent_files,
    image,
    compositing,
    mask,
    io,
    primitives,
    preview,
    upscale,
    controlnet,
    model_patches,
    model_patch_loaders,
    schedulers_extra,
    clip_vision,
    images_extra,
    morphology,
    latent_ops,
    post_processing,
    custom_sampler_extra,
    strings,
    logic,
    gligen,
    style_model,
    guidance_patches,
    unet_patches,
    model_advanced,
    sampling_extra,
    conditioning_extra,
    model_merging,
    lora_tools,
    photomaker,
    hooks,
    context_windows,
    easycache,
    flux,
    sd3,
)


def node_classes(kernel: Kernel) -> dict[str, tuple[type, str | None]]:
    """name -> (class, display name); classes that need the server are bound to ``kernel``."""
    found: dict[str, tuple[type, str | None]] = {}
    for family in FAMILIES:
        for name, (cls, display) in family.NODES.items():
            found[name] = (bind(cls, kernel) if issubclass(cls, KernelNode) else cls, display)
    return found
