"""``comfy.supported_models``: the reference's model-family configs and their detection order.

Each class is the reference's (same ``unet_config`` match keys, extra config, latent format,
sampling settings and prefixes), so ``model_detection.model_config_from_unet`` picks the same
family for a state dict. ``models`` lists them in the order they are tried; packs swap it
temporarily (Easy-Use's Kolors loader), so it is read at call time. Families this server cannot
run are here for detection and ``isinstance`` checks only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import comfy.latent_formats as latent_formats
import torch
from comfy import supported_models_base
from comfy.supported_models_base import BASE, ClipTarget

__all__ = ["BASE", "ClipTarget", "models", "supported_models_base"]


def _sd1_target() -> ClipTarget:
    import comfy.sd1_clip

    return ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)


class SD15(BASE):
    unet_config = {  # noqa: RUF012
        "context_dim": 768,
        "model_channels": 320,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    }
    unet_extra_config = {"num_heads": 8, "num_head_channels": -1}  # noqa: RUF012
    latent_format = latent_formats.SD15
    memory_usage_factor = 1.0

    def clip_target(self, state_dict: Mapping[str, Any] | None = None) -> ClipTarget:
        return _sd1_target()


class SD20(BASE):
    unet_config = {  # noqa: RUF012
        "context_dim": 1024,
        "model_channels": 320,
        "use_linear_in_transformer": True,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    }
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64, "attn_precision": torch.float32}  # noqa: RUF012
    latent_format = latent_formats.SD15
    memory_usage_factor = 1.0

    def model_type(self, state_dict: Mapping[str, Any], prefix: str = "") -> Any:
        import comfy.model_base

        # SD2 768-v checkpoints predict v; the 512 base predicts eps. Tell them apart by the
        # output norm's spread, as the reference does.
        if self.unet_config["in_channels"] == 4:
            key = f"{prefix}output_blocks.11.1.transformer_blocks.0.norm1.bias"
            out = state_dict.get(key)
            if out is not None and torch.std(out.float(), unbiased=False) > 0.09:
                return comfy.model_base.ModelType.V_PREDICTION
        return comfy.model_base.ModelType.EPS


class SD21UnclipL(SD20):
    unet_config = {**SD20.unet_config, "adm_in_channels": 1536}  # noqa: RUF012
    clip_vision_prefix = "embedder.model.visual."
    noise_aug_config = {"noise_schedule_config": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, "timestep_dim": 768}  # noqa: RUF012


class SD21UnclipH(SD20):
    unet_config = {**SD20.unet_config, "adm_in_channels": 2048}  # noqa: RUF012
    clip_vision_prefix = "embedder.model.visual."
    noise_aug_config = {"noise_schedule_config": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, "timestep_dim": 1024}  # noqa: RUF012


class SDXLRefiner(BASE):
    unet_config = {  # noqa: RUF012
        "model_channels": 384,
        "use_linear_in_transformer": True,
        "context_dim": 1280,
        "adm_in_channels": 2560,
        "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0],
        "use_temporal_attention": False,
    }
    latent_format = latent_formats.SDXL
    memory_usage_factor = 1.0

    def clip_target(self, state_dict: Mapping[str, Any] | None = None) -> ClipTarget:
        import comfy.sdxl_clip

        return ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLRefinerClipModel)


class SDXL(BASE):
    unet_config = {  # noqa: RUF012
        "model_channels": 320,
        "use_linear_in_transformer": True,
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "context_dim": 2048,
        "adm_in_channels": 2816,
        "use_temporal_attention": False,
    }
    latent_format = latent_formats.SDXL
    memory_usage_factor = 0.8

    def clip_target(self, state_dict: Mapping[str, Any] | None = None) -> ClipTarget:
        import comfy.sdxl_clip

        return ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)


def _sdxl_variant(depth: list[int], **extra: Any) -> dict[str, Any]:
    return {**SDXL.unet_config, "transformer_depth": depth, **extra}


class SSD1B(SDXL):
    unet_config = _sdxl_variant([0, 0, 2, 2, 4, 4])  # noqa: RUF012


class Segmind_Vega(SDXL):  # noqa: N801 - the reference's class name
    unet_config = _sdxl_variant([0, 0, 1, 1, 2, 2])  # noqa: RUF012


class KOALA_700M(SDXL):  # noqa: N801 - the reference's class name
    unet_config = _sdxl_variant([0, 2, 5])  # noqa: RUF012


class KOALA_1B(SDXL):  # noqa: N801 - the reference's class name
    unet_config = _sdxl_variant([0, 2, 6])  # noqa: RUF012


class SDXL_instructpix2pix(SDXL):  # noqa: N801 - the reference's class name
    unet_config = _sdxl_variant([0, 0, 2, 2, 10, 10], in_channels=8)  # noqa: RUF012


class SD15_instructpix2pix(SD15):  # noqa: N801 - the reference's class name
    unet_config = {**SD15.unet_config, "in_channels": 8}  # noqa: RUF012


class LotusD(SD20):
    unet_config = {  # noqa: RUF012
        "model_channels": 320,
        "use_linear_in_transformer": True,
        "use_temporal_attention": False,
        "adm_in_channels": 4,
        "in_channels": 4,
    }
    unet_extra_config = {"num_classes": "sequential", "num_head_channels": 64}  # noqa: RUF012


class Stable_Zero123(BASE):  # noqa: N801 - the reference's class name
    unet_config = {**SD15.unet_config, "in_channels": 8}  # noqa: RUF012
    unet_extra_config = {"num_heads": 8, "num_head_channels": -1}  # noqa: RUF012
    required_keys = {"cc_projection.weight": None, "cc_projection.bias": None}  # noqa: RUF012
    clip_vision_prefix = "cond_stage_model.model.visual."
    latent_format = latent_formats.SD15


class SD_X4Upscaler(SD20):  # noqa: N801 - the reference's class name
    unet_config = {  # noqa: RUF012
        "context_dim": 1024,
        "model_channels": 256,
        "in_channels": 7,
        "use_linear_in_transformer": True,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    }
    unet_extra_config = {  # noqa: RUF012
        "disable_self_attentions": [True, True, True, False],
        "num_classes": 1000,
        "num_heads": 8,
        "num_head_channels": -1,
    }
    latent_format = latent_formats.SD_X4
    sampling_settings = {"linear_start": 0.0001, "linear_end": 0.02}  # noqa: RUF012


class Stable_Cascade_C(BASE):  # noqa: N801 - the reference's class name
    unet_config = {"stable_cascade_stage": "c"}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.SC_Prior
    supported_inference_dtypes = [torch.bfloat16, torch.float32]  # noqa: RUF012
    sampling_settings = {"shift": 2.0}  # noqa: RUF012
    vae_key_prefix = ["vae."]  # noqa: RUF012
    text_encoder_key_prefix = ["text_encoder."]  # noqa: RUF012
    clip_vision_prefix = "clip_l_vision."


class Stable_Cascade_B(Stable_Cascade_C):  # noqa: N801 - the reference's class name
    unet_config = {"stable_cascade_stage": "b"}  # noqa: RUF012
    latent_format = latent_formats.SC_B
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]  # noqa: RUF012
    sampling_settings = {"shift": 1.0}  # noqa: RUF012
    clip_vision_prefix = None


class SD3(BASE):
    unet_config = {"in_channels": 16, "pos_embed_scaling_factor": None}  # noqa: RUF012
    sampling_settings = {"shift": 3.0}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.SD3
    memory_usage_factor = 1.6
    text_encoder_key_prefix = ["text_encoders."]  # noqa: RUF012


class AuraFlow(BASE):
    unet_config = {"cond_seq_dim": 2048}  # noqa: RUF012
    sampling_settings = {"multiplier": 1.0, "shift": 1.73}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.SDXL
    vae_key_prefix = ["vae."]  # noqa: RUF012
    text_encoder_key_prefix = ["text_encoders."]  # noqa: RUF012


class PixArtAlpha(BASE):
    unet_config = {"image_model": "pixart_alpha"}  # noqa: RUF012
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 0.0001, "linear_end": 0.02, "timesteps": 1000}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.SD15
    memory_usage_factor = 0.5
    vae_key_prefix = ["vae."]  # noqa: RUF012
    text_encoder_key_prefix = ["text_encoders."]  # noqa: RUF012


class PixArtSigma(PixArtAlpha):
    unet_config = {"image_model": "pixart_sigma"}  # noqa: RUF012
    latent_format = latent_formats.SDXL


class HunyuanDiT(BASE):
    unet_config = {"image_model": "hydit"}  # noqa: RUF012
    unet_extra_config = {"attn_precision": torch.float32}  # noqa: RUF012
    sampling_settings = {"linear_start": 0.00085, "linear_end": 0.018}  # noqa: RUF012
    latent_format = latent_formats.SDXL
    memory_usage_factor = 1.3
    vae_key_prefix = ["vae."]  # noqa: RUF012
    text_encoder_key_prefix = ["text_encoders."]  # noqa: RUF012


class Flux(BASE):
    unet_config = {"image_model": "flux", "guidance_embed": True}  # noqa: RUF012
    sampling_settings: dict[str, Any] = {}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.Flux
    memory_usage_factor = 3.1
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]  # noqa: RUF012


class FluxSchnell(Flux):
    unet_config = {"image_model": "flux", "guidance_embed": False}  # noqa: RUF012
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}  # noqa: RUF012


class GenmoMochi(BASE):
    unet_config = {"image_model": "mochi_preview"}  # noqa: RUF012
    sampling_settings = {"multiplier": 1.0, "shift": 6.0}  # noqa: RUF012
    unet_extra_config: dict[str, Any] = {}  # noqa: RUF012
    latent_format = latent_formats.Mochi
    supported_inference_dtypes = [torch.bfloat16, torch.float32]  # noqa: RUF012
    vae_key_prefix = ["vae."]  # noqa: RUF012
    text_encoder_key_prefix = ["text_encoders."]  # noqa: RUF012


class SVD_img2vid(BASE):  # noqa: N801 - the reference's class name
    unet_config = {  # noqa: RUF012
        "model_channels": 320,
        "in_channels": 8,
        "use_linear_in_transformer": True,
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "context_dim": 1024,
        "adm_in_channels": 768,
        "use_temporal_attention": True,
        "use_temporal_resblock": True,
    }
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64, "attn_precision": torch.float32}  # noqa: RUF012
    clip_vision_prefix = "conditioner.embedders.0.open_clip.model.visual."
    latent_format = latent_formats.SD15
    sampling_settings = {"sigma_max": 700.0, "sigma_min": 0.002}  # noqa: RUF012


# Tried in this order (the reference's relative order of these families).
models: list[type[BASE]] = [
    LotusD,
    Stable_Zero123,
    SD15_instructpix2pix,
    SD15,
    SD20,
    SD21UnclipL,
    SD21UnclipH,
    SDXL_instructpix2pix,
    SDXLRefiner,
    SDXL,
    SSD1B,
    KOALA_700M,
    KOALA_1B,
    Segmind_Vega,
    SD_X4Upscaler,
    Stable_Cascade_C,
    Stable_Cascade_B,
    SD3,
    AuraFlow,
    PixArtAlpha,
    PixArtSigma,
    HunyuanDiT,
    Flux,
    FluxSchnell,
    GenmoMochi,
    SVD_img2vid,
]
