"""The diffusion model behind a MODEL (the reference's ``comfy.model_base``): UNet + noise schedule.

A MODEL (:class:`~plugins.core_nodes.models.patcher.ModelPatcher`) holds one of these as ``.model``.
Packs reach through it (``model.model.diffusion_model``, ``.model_sampling``, ``.latent_format``,
``.model_config.unet_config``) and branch on its class, sometimes by exact type
(``type(model.model) == BaseModel`` means SD1.x / SD2.x), so each family gets the reference's
class: :class:`BaseModel` for SD1.x / SD2.x, :class:`SDXL`, :class:`SDXLRefiner`. The other
reference class names exist for ``isinstance`` checks only; this server builds none of them.

:meth:`BaseModel.denoise` is the one place a UNet becomes a denoiser: the network sees
``x / sqrt(sigma^2 + 1)`` at the nearest discrete timestep and predicts eps or v; SDXL's ADM vector
is built from the pooled text output and the size / crop conditioning (as in the reference, a
missing ``width`` / ``height`` is the latent's size times 8, the target size defaults to it, the
crop to 0, the refiner's aesthetic score to 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.contracts import LatentFormat
from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP, get_all_wrappers
from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetConfig, UNetModel, sdxl_adm
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete

# The reference sizes SDXL's default size conditioning by 8 pixels per latent pixel whatever
# the VAE, so this is not the VAE's downscale ratio.
_ADM_PIXELS_PER_LATENT = 8

UNetCall = Callable[..., torch.Tensor]


class ModelType(Enum):
    """How a network's output is read (the reference's members and values)."""

    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10
    IMG_TO_IMG_FLOW = 11


def reference_unet_config(config: UNetConfig) -> dict[str, Any]:
    """Our UNet config in the reference's ``unet_config`` keys (``transformer_depth`` per input block)."""
    per_block = [d for depth, n in zip(config.transformer_depth, config.num_res_blocks, strict=True) for d in [depth] * n]
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "model_channels": config.model_channels,
        "num_res_blocks": list(config.num_res_blocks),
        "channel_mult": list(config.channel_mult),
        "transformer_depth": per_block,
        "transformer_depth_output": list(config.transformer_depth_output),
        "transformer_depth_middle": config.transformer_depth_middle,
        "context_dim": config.context_dim,
        "use_linear_in_transformer": config.use_linear_in_transformer,
        "num_heads": config.num_heads if config.num_heads is not None else -1,
        "num_head_channels": config.num_head_channels if config.num_head_channels is not None else -1,
        "adm_in_channels": config.adm_in_channels,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "legacy": False,
    }


class ModelConfig:
    """What the reference's ``model.model_config`` answers: the UNet's config dict, the latent
    format, the sampling settings and the family's dtype options."""

    def __init__(
        self,
        unet_config: Mapping[str, Any],
        latent_format: LatentFormat | None = None,
        sampling_settings: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.unet_config: dict[str, Any] = dict(unet_config)
        self.unet_extra_config: dict[str, Any] = {}
        self.latent_format = latent_format
        self.sampling_settings: dict[str, Any] = dict(sampling_settings or {})
        self.manual_cast_dtype: torch.dtype | None = None
        self.custom_operations: Any = None
        self.scaled_fp8: Any = None
        self.optimizations: dict[str, Any] = {"fp8": False}
        self.memory_usage_factor = 2.0
        self.supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
        self.name = name


class BaseModel(nn.Module):
    """SD1.x / SD2.x (and the base of every other family class).

    Built by this server with ``diffusion_model`` (our :class:`UNetModel`), ``model_sampling`` and
    ``latent_format``; a pack may construct one with only ``model_config`` / ``model_type`` (the
    reference's signature), which gives a model without a network (``diffusion_model`` None).
    """

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        model_type: ModelType = ModelType.EPS,
        device: torch.device | None = None,
        unet_model: Any = None,
        *,
        diffusion_model: nn.Module | None = None,
        model_sampling: Any = None,
        latent_format: LatentFormat | None = None,
    ) -> None:
        super().__init__()
        self.model_config = model_config if model_config is not None else ModelConfig({})
        self.model_type = model_type
        self.diffusion_model = diffusion_model
        if model_sampling is None:
            prediction = "v" if model_type == ModelType.V_PREDICTION else "eps"
            model_sampling = ModelSamplingDiscrete(prediction=prediction)
        self.model_sampling = model_sampling
        # A pack's own config object (its subclass of the reference's model config) may lack some.
        config = self.model_config
        self.latent_format = latent_format if latent_format is not None else getattr(config, "latent_format", None)
        self.manual_cast_dtype = getattr(config, "manual_cast_dtype", None)
        self.memory_usage_factor = getattr(config, "memory_usage_factor", 2.0)
        unet_config = getattr(config, "unet_config", None) or {}
        self.adm_channels = int(unet_config.get("adm_in_channels") or 0)
        self.concat_keys: tuple[str, ...] = ()
        self.inpaint_model = False
        # The MODEL sampling with this model now (the reference's pointer, set by ``pre_run``):
        # ``apply_model`` runs through it so a pack's direct call sees that MODEL's patches.
        self.current_patcher: Any = None
        self.model_loaded_weight_memory = 0
        self.lowvram_patch_counter = 0
        self.model_lowvram = False
        self.current_weight_patches_uuid: Any = None
        self._device = device

    # -- what packs read ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device | None:
        """Where the network's weights are now (the model manager moves them)."""
        first = next(self.parameters(), None)
        return first.device if first is not None else self._device

    @device.setter
    def device(self, device: torch.device | None) -> None:
        self._device = device

    def get_dtype(self) -> torch.dtype:
        first = next(self.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def memory_required(self, input_shape: Any, cond_shapes: Mapping[str, Any] | None = None) -> float:
        """Bytes of working memory one call on latents of ``input_shape`` needs (the reference's estimate)."""
        area = input_shape[0] * math.prod(input_shape[2:])
        size = torch.finfo(self.get_dtype()).bits // 8
        return area * size * 0.01 * self.memory_usage_factor * 1024 * 1024

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        assert self.latent_format is not None
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        assert self.latent_format is not None
        return self.latent_format.process_out(latent)

    def is_adm(self) -> bool:
        return self.adm_channels > 0

    def concat_channels(self) -> int:
        if not isinstance(self.diffusion_model, UNetModel):
            return 0
        config = self.diffusion_model.config
        return max(0, config.in_channels - config.out_channels)

    # -- running the network -----------------------------------------------------------------

    def encode_adm(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        """The ADM vector for ``cond`` on latents ``x`` (None for models without one)."""
        return None

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The denoised latent for ``x`` at sigma ``t`` (the reference's signature and result).

        Runs through the MODEL sampling now (``current_patcher``), so its patches apply; without one,
        the bare network. ``kwargs`` are more conditioning: ``y`` (the ADM vector itself),
        ``pooled_output``, ``width``, ``height``...
        """
        options = dict(transformer_options or {})
        wrappers = get_all_wrappers(WrappersMP.APPLY_MODEL, options)
        executor = WrapperExecutor.new_class_executor(self._apply_model, self, wrappers)
        return executor.execute(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def _apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        cond: dict[str, Any] = {"c_crossattn": c_crossattn, **kwargs}
        if c_concat is not None:
            cond["c_concat"] = c_concat
        if control is not None:
            cond["control"] = control
        patcher = self.current_patcher
        if patcher is not None and getattr(patcher, "model", None) is self and hasattr(patcher, "run_model"):
            return patcher.run_model(x, t, cond, transformer_options or {})
        if self.diffusion_model is None:
            raise NotImplementedError("this model has no network to run")
        return self.denoise(x, t, cond, transformer_options or {}, self.diffusion_model, self.model_sampling)

    @torch.no_grad()
    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, Any],
        transformer_options: dict[str, Any],
        unet: UNetCall,
        model_sampling: Any,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The denoised latent: ``unet(inputs, timesteps, context, y, control, transformer_options)``
        on the scaled input, read through ``model_sampling``; computed on ``device`` (default: x's)."""
        device = device or x.device
        sigma = sigma.reshape(-1).float().cpu()
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        xd = x.to(device)
        inputs = model_sampling.calculate_input(sigma.to(device), xd)
        concat = cond.get("c_concat")
        if concat is not None and self.concat_channels():
            inputs = torch.cat([inputs, concat.to(inputs)], dim=1)
        timesteps = model_sampling.timestep(sigma).float().to(device)
        context = cond["c_crossattn"].to(device)
        y = cond.get("y")
        y = y.to(device) if y is not None else self.encode_adm(cond, xd)
        transformer_options.setdefault("sigmas", sigma.to(device))
        output = unet(inputs, timesteps, context, y, cond.get("control"), transformer_options)
        denoised = model_sampling.calculate_denoised(sigma.to(device), output.float(), xd.float())
        return denoised.to(x.device, x.dtype)


def _sdxl_adm(model: BaseModel, cond: Mapping[str, Any], x: torch.Tensor, refiner: bool) -> torch.Tensor | None:
    if not model.adm_channels:
        return None
    pooled_width = model.adm_channels - (5 if refiner else 6) * ADM_SCALAR_DIM
    pooled = cond.get("pooled_output")
    if pooled is None:
        pooled = torch.zeros(x.shape[0], pooled_width)
    pooled = pooled.to(device=x.device, dtype=torch.float32)
    if pooled.shape[0] != x.shape[0]:
        pooled = pooled[:1].expand(x.shape[0], -1)
    width = float(cond.get("width", x.shape[-1] * _ADM_PIXELS_PER_LATENT))
    height = float(cond.get("height", x.shape[-2] * _ADM_PIXELS_PER_LATENT))
    crop_w, crop_h = float(cond.get("crop_w", 0)), float(cond.get("crop_h", 0))
    if refiner:
        score = float(cond.get("aesthetic_score", 6.0))
        return sdxl_adm(pooled, height, width, crop_h, crop_w, aesthetic_score=score)
    target_w = float(cond.get("target_width", width))
    target_h = float(cond.get("target_height", height))
    return sdxl_adm(pooled, height, width, crop_h, crop_w, target_h, target_w)


class SDXL(BaseModel):
    """SDXL base: the ADM vector is pooled text + size, crop and target size."""

    def encode_adm(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        return _sdxl_adm(self, cond, x, refiner=False)


class SDXLRefiner(BaseModel):
    """SDXL refiner: the ADM vector is pooled text + size, crop and an aesthetic score."""

    def encode_adm(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        return _sdxl_adm(self, cond, x, refiner=True)


# The reference's other families, by name, for packs' isinstance checks; this server loads none.
class SD21UNCLIP(BaseModel): ...


class SD15_instructpix2pix(BaseModel): ...  # noqa: N801 - the reference's name


class SDXL_instructpix2pix(SDXL): ...  # noqa: N801 - the reference's name


class SVD_img2vid(BaseModel): ...  # noqa: N801 - the reference's name


class Stable_Zero123(BaseModel): ...  # noqa: N801 - the reference's name


class SD_X4Upscaler(BaseModel): ...  # noqa: N801 - the reference's name


class StableCascade_C(BaseModel): ...  # noqa: N801 - the reference's name


class StableCascade_B(BaseModel): ...  # noqa: N801 - the reference's name


class SD3(BaseModel): ...


class AuraFlow(BaseModel): ...


class StableAudio1(BaseModel): ...


class HunyuanDiT(BaseModel): ...


class PixArt(BaseModel): ...


class Flux(BaseModel): ...


class GenmoMochi(BaseModel): ...


class LTXV(BaseModel): ...


class HunyuanVideo(BaseModel): ...


class CosmosVideo(BaseModel): ...


class Lumina2(BaseModel): ...


class WAN21(BaseModel): ...


class HiDream(BaseModel): ...


class Chroma(Flux): ...


class ACEStep(BaseModel): ...


class Omnigen2(BaseModel): ...


class QwenImage(BaseModel): ...


FAMILY_CLASSES: dict[str, type[BaseModel]] = {
    "sd1": BaseModel,
    "sd2": BaseModel,
    "sdxl": SDXL,
    "sdxl_refiner": SDXLRefiner,
}


def _config_class(reference_name: str) -> type[ModelConfig]:
    # Packs tell families apart by the config's class name (ComfyUI-IC-Light requires "SD15" in
    # type(model.model.model_config).__name__), so each family's config carries the reference's.
    return type(reference_name, (ModelConfig,), {"__doc__": f"The model config of the reference's {reference_name}."})


# Our family name -> its config class, named as the reference's comfy.supported_models classes.
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    "sd1": _config_class("SD15"),
    "sd2": _config_class("SD20"),
    "sdxl": _config_class("SDXL"),
    "sdxl_refiner": _config_class("SDXLRefiner"),
}


def model_type_for(prediction: str) -> ModelType:
    return ModelType.V_PREDICTION if prediction == "v" else ModelType.EPS


def build_base_model(
    family_name: str,
    prediction: str,
    unet: UNetModel,
    latent_format: LatentFormat,
    model_sampling: ModelSamplingDiscrete | None = None,
) -> BaseModel:
    """The reference class of this family around our UNet (a new, thin object: the UNet is shared)."""
    cls = FAMILY_CLASSES.get(family_name, BaseModel)
    config_cls = CONFIG_CLASSES.get(family_name, ModelConfig)
    config = config_cls(reference_unet_config(unet.config), latent_format, {}, name=family_name)
    model_type = model_type_for(prediction)
    return cls(
        config,
        model_type,
        diffusion_model=unet,
        model_sampling=model_sampling or ModelSamplingDiscrete(prediction=prediction),
        latent_format=latent_format,
    )


__all__ = [
    "FAMILY_CLASSES",
    "SDXL",
    "BaseModel",
    "ModelConfig",
    "ModelType",
    "SDXLRefiner",
    "build_base_model",
    "model_type_for",
    "reference_unet_config",
]
