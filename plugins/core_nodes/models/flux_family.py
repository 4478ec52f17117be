"""Flux as a model family: its MODEL class, its diffusion-model files, its text encoders.

* :class:`FluxModel` is the reference's ``model_base.Flux``: flow sampling (``ModelSamplingFlux``
  with the CONST prediction, shift 1.15 for dev, 1.0 for schnell), the pooled CLIP-L text as
  ``y``, the T5 text as ``c_crossattn`` and the distilled guidance from the conditioning's
  ``guidance`` (3.5 when unset, left out when None).
* :func:`load_flux_file` builds the transformer from a diffusion-model file (bf16 / fp16 / fp8
  storage). fp8 weights (stored so, or asked for by UNETLoader's ``weight_dtype``) stay fp8 and
  are cast per layer as they run (``operations.CastOperations``); compute is bf16 on a GPU,
  float32 on the CPU.
* :func:`flux_text_stack` is DualCLIPLoader's ``flux``: CLIP-L (pooled output before its
  projection) and T5-XXL (its hidden states are the conditioning; prompts padded to 256 tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from plugins.core_nodes.conds import CONDRegular
from plugins.core_nodes.contracts import LatentFormat
from plugins.core_nodes.models import model_base
from plugins.core_nodes.models.clip import build_model, extract_text_encoders
from plugins.core_nodes.models.flux import (
    FluxConfig,
    FluxTransformer,
    build_flux,
    is_flux_state_dict,
    strip_flux_prefix,
)
from plugins.core_nodes.models.latent_formats import FLUX
from plugins.core_nodes.models.operations import (
    FP8_DTYPES,
    FP8_STORAGE,
    CastOperations,
    fp8_layer_weights,
    has_fp8_layers,
)
from plugins.core_nodes.models.t5 import T5TextEncoder, build_t5, is_t5_state_dict
from plugins.core_nodes.models.t5_tokenizer import FLUX_MIN_LENGTH, T5Tokenizer
from plugins.core_nodes.models.text_encoder import ClipEncoder, TextEncoderStack
from plugins.core_nodes.models.tokenizer import END_TOKEN, EmbeddingLookup, make_tokenizers
from plugins.core_nodes.sampling.model_sampling import CONST, ModelSamplingFlux, model_sampling_class

__all__ = [
    "DEFAULT_GUIDANCE",
    "FluxModel",
    "build_flux_model",
    "flux_checkpoint_stack",
    "flux_text_stack",
    "is_flux_checkpoint_text",
    "is_flux_file",
    "load_flux_file",
]

DEFAULT_GUIDANCE = 3.5
FAMILY = "flux"


class FluxModel(model_base.Flux):
    """Flux dev / schnell around our :class:`~.flux.FluxTransformer`."""

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        return kwargs.get("pooled_output")

    def concat_channels(self) -> int:
        return 0

    def extra_conds(self, **kwargs: Any) -> dict[str, CONDRegular]:
        out: dict[str, CONDRegular] = {}
        pooled = kwargs.get("pooled_output")
        if pooled is not None:
            out["y"] = CONDRegular(pooled)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = CONDRegular(cross_attn)
        guidance = kwargs.get("guidance", DEFAULT_GUIDANCE)
        if guidance is not None:
            out["guidance"] = CONDRegular(torch.FloatTensor([float(guidance)]))
        return out

    @torch.no_grad()
    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, Any],
        transformer_options: dict[str, Any],
        unet: Any,
        model_sampling: Any,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The denoised latent: the transformer's flow prediction at ``timestep(sigma)`` read
        through ``model_sampling`` (CONST: ``x - sigma * v``)."""
        device = device or x.device
        sigma = sigma.reshape(-1).float().cpu()
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        xd = x.to(device)
        inputs = model_sampling.calculate_input(sigma.to(device), xd)
        timesteps = model_sampling.timestep(sigma).float().to(device)
        context = cond["c_crossattn"].to(device)
        y = cond.get("y")
        if y is None:
            y = torch.zeros(x.shape[0], self.diffusion_model.config.vec_in_dim, device=device)
        guidance = cond.get("guidance")
        config = getattr(self.diffusion_model, "config", None)
        if guidance is None and getattr(config, "guidance_embed", False):
            guidance = torch.full((x.shape[0],), DEFAULT_GUIDANCE)
        if guidance is not None:
            guidance = guidance.reshape(-1).float().to(device)
            if guidance.numel() == 1 and x.shape[0] > 1:
                guidance = guidance.expand(x.shape[0])
        transformer_options.setdefault("sigmas", sigma.to(device))
        output = unet(inputs, timesteps, context, y.to(device), guidance, cond.get("control"), transformer_options)
        denoised = model_sampling.calculate_denoised(sigma.to(device), output.float(), xd.float())
        return denoised.to(x.device, x.dtype)


def _config_class(name: str) -> type[model_base.ModelConfig]:
    return type(name, (model_base.ModelConfig,), {"__doc__": f"The model config of the reference's {name}."})


# The reference's supported_models classes (packs read the config's class name).
CONFIG_CLASSES = {"dev": _config_class("Flux"), "schnell": _config_class("FluxSchnell")}


def reference_unet_config(config: FluxConfig) -> dict[str, Any]:
    """The config in the reference's ``unet_config`` keys."""
    return {
        "image_model": "flux",
        "in_channels": config.latent_channels,
        "patch_size": 2,
        "out_channels": config.out_channels // 4,
        "vec_in_dim": config.vec_in_dim,
        "context_in_dim": config.context_in_dim,
        "hidden_size": config.hidden_size,
        "mlp_ratio": config.mlp_ratio,
        "num_heads": config.num_heads,
        "depth": config.depth,
        "depth_single_blocks": config.depth_single_blocks,
        "axes_dim": list(config.axes_dim),
        "theta": config.theta,
        "qkv_bias": config.qkv_bias,
        "guidance_embed": config.guidance_embed,
    }


def build_flux_model(net: FluxTransformer, latent_format: LatentFormat = FLUX) -> FluxModel:
    """The MODEL's ``.model`` for a Flux transformer: dev samples at shift 1.15, schnell at 1.0."""
    config = net.config
    settings = {"shift": 1.15} if config.guidance_embed else {"shift": 1.0, "multiplier": 1.0}
    model_config = CONFIG_CLASSES[config.variant](reference_unet_config(config), latent_format, settings, name=FAMILY)
    model_config.memory_usage_factor = 2.8
    model_config.supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    sampling = model_sampling_class(ModelSamplingFlux, CONST)(model_config)
    return FluxModel(
        model_config,
        model_base.ModelType.FLUX,
        diffusion_model=net,
        model_sampling=sampling,
        latent_format=latent_format,
    )


def is_flux_file(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a diffusion-model file (prefixed or not) holds a Flux transformer."""
    return is_flux_state_dict(strip_flux_prefix(sd))


def load_flux_file(
    sd: Mapping[str, torch.Tensor],
    compute_dtype: torch.dtype | None = None,
    weight_dtype: str = "default",
) -> FluxTransformer:
    """The transformer of a Flux file. ``compute_dtype`` None means the file's (fp8 files: bf16).
    fp8 storage (the file's, or ``weight_dtype``'s) is kept and cast per layer at compute time."""
    weights = strip_flux_prefix(sd)
    storage = FP8_STORAGE.get(weight_dtype)
    stored = weights["img_in.weight"].dtype
    if storage is None and stored not in FP8_DTYPES:
        return build_flux(weights, compute_dtype)
    compute = compute_dtype or (stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16)
    if storage is not None:
        # Matrices go to fp8; biases and norm scales stay (what the reference's fp8 storage keeps).
        weights = fp8_layer_weights(weights, storage)
    return build_flux(weights, compute, operations=CastOperations)


def flux_text_stack(
    files: list[Mapping[str, torch.Tensor]],
    embeddings: EmbeddingLookup | None = None,
    dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """CLIP-L and T5-XXL from two ``text_encoders/`` files, in either order."""
    t5_files = [f for f in files if is_t5_state_dict(f)]
    clip_files = [f for f in files if not is_t5_state_dict(f)]
    if len(t5_files) != 1 or len(clip_files) != 1:
        raise ValueError("a Flux text encoder pair is one CLIP-L file and one T5-XXL file")
    found = extract_text_encoders(clip_files[0])
    if len(found) != 1:
        raise ValueError(f"expected one CLIP text encoder, found {len(found)}")
    ((_, (_, clip_weights)),) = found.items()
    clip_l = build_model(clip_weights, "clip_l", None, None, dtype)
    t5_weights = t5_files[0]
    # An fp8 T5-XXL (t5xxl_fp8_e4m3fn: ~4.9 GB against ~9.5 in bf16, ~19 in float32) keeps its
    # storage; its layers cast their weights per call.
    t5 = build_t5(t5_weights, dtype, CastOperations if has_fp8_layers(t5_weights) else None)
    # Flux reads CLIP-L's pooled output before the text projection, and T5's last layer.
    encoders: dict[str, Any] = {
        "l": ClipEncoder(clip_l, None, True, END_TOKEN, project_pooled=False),
        "t5xxl": T5TextEncoder(t5),
    }
    directories = getattr(embeddings, "directories", None)
    tokenizers: dict[str, Any] = make_tokenizers("sd1", embeddings, embedding_directory=directories)
    tokenizers["l"].embedding_size = clip_l.config.width
    tokenizers["t5xxl"] = T5Tokenizer(min_length=FLUX_MIN_LENGTH, embedding_size=t5.config.width)
    return TextEncoderStack(FAMILY, tokenizers, encoders)


# A full Flux checkpoint's text encoders (the layout of the reference's flux1-dev-fp8 files).
CHECKPOINT_CLIP_L = "text_encoders.clip_l.transformer."
CHECKPOINT_T5 = "text_encoders.t5xxl.transformer."


def is_flux_checkpoint_text(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a checkpoint's text-encoder weights are Flux's pair (CLIP-L and T5-XXL, no CLIP-G)."""
    # SD3 checkpoints hold the same two beside CLIP-G (text_encoders.clip_g.): those are SD3's set.
    pair = any(k.startswith(CHECKPOINT_T5) for k in sd) and any(k.startswith(CHECKPOINT_CLIP_L) for k in sd)
    return pair and not any(k.startswith("text_encoders.clip_g.") for k in sd)


def flux_checkpoint_stack(
    sd: Mapping[str, torch.Tensor],
    embeddings: EmbeddingLookup | None = None,
    dtype: torch.dtype | None = None,
) -> TextEncoderStack:
    """The text encoders of a full Flux checkpoint (``text_encoders.clip_l.transformer.*`` and
    ``text_encoders.t5xxl.transformer.*``), as DualCLIPLoader's ``flux`` builds them from files."""
    clip = {k[len(CHECKPOINT_CLIP_L) :]: v for k, v in sd.items() if k.startswith(CHECKPOINT_CLIP_L + "text_model.")}
    t5 = {k[len(CHECKPOINT_T5) :]: v for k, v in sd.items() if k.startswith(CHECKPOINT_T5)}
    return flux_text_stack([clip, t5], embeddings, dtype)


def combine_flux(outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's conditioning: T5's hidden states, CLIP-L's pooled output."""
    (t5_cond, _), (_, l_pooled) = outputs["t5xxl"], outputs["l"]
    assert l_pooled is not None
    return t5_cond, l_pooled
