"""`comfy.model_base`: the model classes a MODEL's ``.model`` is an instance of.

SD1.x / SD2.x models are exactly :class:`BaseModel` (packs compare ``type(model.model) ==
BaseModel``), SDXL models :class:`SDXL`, refiners :class:`SDXLRefiner`, SD2.1 unCLIP models
:class:`SD21UNCLIP` (with ``CLIPEmbeddingNoiseAugmentation`` and ``unclip_adm``, the image
conditioning the SDXL classes read through ``sdxl_pooled`` too). The other families' class names
exist for ``isinstance`` checks only: this server loads none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

from plugins.core_nodes.models.model_base import (
    LTXV,
    SD3,
    SD21UNCLIP,
    SDXL,
    WAN21,
    ACEStep,
    AuraFlow,
    BaseModel,
    Chroma,
    CosmosVideo,
    Flux,
    GenmoMochi,
    HiDream,
    HunyuanDiT,
    HunyuanVideo,
    Lumina2,
    ModelConfig,
    ModelType,
    Omnigen2,
    PixArt,
    QwenImage,
    SD15_instructpix2pix,
    SD_X4Upscaler,
    SDXL_instructpix2pix,
    SDXLRefiner,
    Stable_Zero123,
    StableAudio1,
    StableCascade_B,
    StableCascade_C,
    SVD_img2vid,
)
from plugins.core_nodes.models.unclip import CLIPEmbeddingNoiseAugmentation, unclip_adm
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete


class Anima(BaseModel): ...


class CosmosPredict2(BaseModel): ...


def sdxl_pooled(args: Mapping[str, Any], noise_augmentor: Any) -> Any:
    """What SDXL's ADM vector starts with: the entry's unCLIP image embeddings augmented by
    ``noise_augmentor`` (seed minus 10) when it has them, else its pooled text output."""
    if "unclip_conditioning" in args:
        seed = args.get("seed", 0) - 10
        adm = unclip_adm(args["unclip_conditioning"], args["device"], noise_augmentor, seed=seed)
        return adm[:, : noise_augmentor.time_embed.dim]
    return args["pooled_output"]


def model_sampling(model_config: Any, model_type: ModelType) -> ModelSamplingDiscrete:
    """The noise schedule for ``model_type``: the discrete DDPM schedule, eps or v.

    Raises ``NotImplementedError`` for the continuous / flow types this server does not sample.
    """
    if model_type not in (ModelType.EPS, ModelType.V_PREDICTION):
        raise NotImplementedError(f"model sampling for {model_type} is not supported by this server")
    return ModelSamplingDiscrete(prediction="v" if model_type == ModelType.V_PREDICTION else "eps")


__all__ = [
    "ACEStep",
    "Anima",
    "CLIPEmbeddingNoiseAugmentation",
    "CosmosPredict2",
    "Timestep",
    "sdxl_pooled",
    "AuraFlow",
    "BaseModel",
    "Chroma",
    "CosmosVideo",
    "Flux",
    "GenmoMochi",
    "HiDream",
    "HunyuanDiT",
    "HunyuanVideo",
    "LTXV",
    "Lumina2",
    "ModelConfig",
    "ModelType",
    "Omnigen2",
    "PixArt",
    "QwenImage",
    "SD3",
    "SD15_instructpix2pix",
    "SD21UNCLIP",
    "SDXL",
    "SDXLRefiner",
    "SDXL_instructpix2pix",
    "SD_X4Upscaler",
    "SVD_img2vid",
    "StableAudio1",
    "StableCascade_B",
    "StableCascade_C",
    "Stable_Zero123",
    "WAN21",
    "model_sampling",
    "unclip_adm",
]
