"""The objects the model patch nodes put on a MODEL's patch points.

Each carries what the reference's patch carries (the MODEL_PATCH, the VAE and images, strengths)
and its ``to`` / ``models`` protocol, so the model manager and packs handle it like the
reference's. :class:`UsoStyleProjectorPatch` computes the reference's ``post_input`` change (the
projected style tokens put before the text tokens); the ControlNet patches need a Qwen-Image /
Z-Image transformer and VAE, which this server does not run, so calling them is an error
(sampling stops earlier, at the family check of :mod:`~plugins.core_nodes.models.model_patch`).
"""

from __future__ import annotations

from typing import Any

import torch

from plugins.core_nodes.models.model_patch import TARGET_FAMILY, UnsupportedModelFamily


def stack_siglip_layers(clip_vision_output: Any) -> torch.Tensor | None:
    """USO's image features: hidden states of layer -20, layer -11 and the penultimate layer,
    stacked ``[3, B, tokens, dim]``; None when the encoder output has no per-layer states (only
    SigLIP encoders give them)."""
    layers = getattr(clip_vision_output, "all_hidden_states", None)
    penultimate = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if not isinstance(layers, torch.Tensor) or penultimate is None or layers.shape[1] < 20:
        return None
    return torch.stack((layers[:, -20], layers[:, -11], penultimate))


class UsoStyleProjectorPatch:
    """``post_input`` patch: the USO projector's style tokens go before the text tokens, with
    zero position ids."""

    def __init__(self, model_patch: Any, encoded_image: torch.Tensor | None) -> None:
        self.model_patch = model_patch
        self.encoded_image = encoded_image

    def __call__(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.encoded_image is None:
            raise ValueError(
                "USO style reference needs a SigLIP vision encoder's output (per-layer hidden states); "
                "this CLIP_VISION_OUTPUT has none"
            )
        txt, txt_ids = kwargs["txt"], kwargs["txt_ids"]
        style = self.model_patch.model(self.encoded_image.to(txt.dtype)).to(txt.dtype)
        kwargs["txt"] = torch.cat([style, txt], dim=1)
        ids = torch.zeros(style.shape[0], style.shape[1], 3, dtype=txt_ids.dtype, device=txt_ids.device)
        kwargs["txt_ids"] = torch.cat([ids, txt_ids], dim=1)
        return kwargs

    def to(self, device_or_dtype: Any) -> UsoStyleProjectorPatch:
        if isinstance(device_or_dtype, torch.device) and self.encoded_image is not None:
            self.encoded_image = self.encoded_image.to(device_or_dtype)
        return self

    def models(self) -> list[Any]:
        return [self.model_patch]


class DitControlPatch:
    """``double_block`` (and, for Z-Image, ``noise_refiner``) patch of the Qwen-Image DiffSynth and
    Z-Image Fun ControlNets: their hint image, optional inpainting image and mask, and strength."""

    def __init__(
        self,
        kind: str,
        model_patch: Any,
        vae: Any,
        image: torch.Tensor | None,
        strength: float,
        inpaint_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        self.kind = kind
        self.model_patch = model_patch
        self.vae = vae
        self.image = image
        self.inpaint_image = inpaint_image
        self.mask = mask
        self.strength = strength
        self.encoded_image: torch.Tensor | None = None

    def __call__(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        raise UnsupportedModelFamily(f"the {TARGET_FAMILY[self.kind]} ControlNet patch runs only inside a {TARGET_FAMILY[self.kind]} transformer")

    def to(self, device_or_dtype: Any) -> DitControlPatch:
        if isinstance(device_or_dtype, torch.device) and self.encoded_image is not None:
            self.encoded_image = self.encoded_image.to(device_or_dtype)
        return self

    def models(self) -> list[Any]:
        return [self.model_patch]


class SupirPatchSettings:
    """What SUPIRApply attaches: the low-quality image, the VAE, the strength ramp (``strength_start``
    at the highest sigma to ``strength_end`` at the lowest) and the restoring CFG settings."""

    def __init__(
        self,
        model_patch: Any,
        vae: Any,
        image: torch.Tensor,
        strength_start: float,
        strength_end: float,
        restore_cfg: float,
        restore_cfg_s_tmin: float,
    ) -> None:
        self.model_patch = model_patch
        self.vae = vae
        self.image = image
        self.strength_start = strength_start
        self.strength_end = strength_end
        self.restore_cfg = restore_cfg
        self.restore_cfg_s_tmin = restore_cfg_s_tmin

    def __call__(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        raise UnsupportedModelFamily("SUPIR's control encoder is not supported by this server")

    def to(self, device_or_dtype: Any) -> SupirPatchSettings:
        return self

    def models(self) -> list[Any]:
        return [self.model_patch]
