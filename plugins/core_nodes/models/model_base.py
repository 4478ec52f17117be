"""The diffusion model behind a MODEL (the reference's ``comfy.model_base``): UNet + noise schedule.

A MODEL (:class:`~plugins.core_nodes.models.patcher.ModelPatcher`) holds one of these as ``.model``.
Packs reach through it (``model.model.diffusion_model``, ``.model_sampling``, ``.latent_format``,
``.model_config.unet_config``) and branch on its class, sometimes by exact type
(``type(model.model) == BaseModel`` means SD1.x / SD2.x), so each family gets the reference's
class: :class:`BaseModel` for SD1.x / SD2.x, :class:`SDXL`, :class:`SDXLRefiner`. The other
reference class names exist for ``isinstance`` checks only; this server builds none of them, except
:class:`SD21UNCLIP` (SD2.1 unCLIP: an SD2 UNet whose ADM input is a noise-augmented CLIP image
embedding, see :mod:`plugins.core_nodes.models.unclip`).

:meth:`BaseModel.extra_conds` is what the sampler's ``process_conds`` asks of the model for each
cond entry (the reference's keyword arguments: the entry's options plus ``noise``, ``device``,
``latent_image``, ``denoise_mask``, ``width`` / ``height`` defaulting to the latent's size times
8, ``prompt_type``...): the ``model_conds`` of the call, ``c_crossattn`` from the encoded text,
``y`` from :meth:`encode_adm` (SDXL: pooled text + size, crop and target size, or the refiner's
aesthetic score, 6 for positive prompts and 2.5 for negative ones) and ``c_concat`` from
:meth:`concat_cond` (inpainting models: the repaint mask and the masked latent). Packs replace it
with ``add_object_patch("extra_conds", fn)`` (ComfyUI-IC-Light) and the sampler honours that.

:meth:`BaseModel.denoise` is the one place a UNet becomes a denoiser: the network sees
``x / sqrt(sigma^2 + 1)`` (with ``c_concat`` appended along the channels) at the nearest discrete
timestep and predicts eps or v.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.conds import (
    CONDCrossAttn,
    CONDNoiseShape,
    CONDRegular,
    repeat_to_batch_size,
    resize_to_batch_size,
)
from plugins.core_nodes.contracts import LatentFormat
from plugins.core_nodes.models.extension import WrapperExecutor, WrappersMP, get_all_wrappers
from plugins.core_nodes.models.mmdit import MMDiT, MMDiTConfig
from plugins.core_nodes.models.operations import casting_view
from plugins.core_nodes.models.unet import ADM_SCALAR_DIM, UNetConfig, UNetModel, sdxl_adm
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete

# The reference sizes SDXL's default size conditioning by 8 pixels per latent pixel whatever
# the VAE, so this is not the VAE's downscale ratio.
_ADM_PIXELS_PER_LATENT = 8
# An SD latent of an all-black image, per channel: what an inpainting model sees as the masked
# image when no mask is given (the reference's values).
_BLACK_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)

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
        """The dtype the network computes in: the UNet's own (not its first weight's, which a
        pack's quantized layers keep packed as integers), else the first weight's."""
        dtype = getattr(self.diffusion_model, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
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

    # -- conditioning (what process_conds asks for each cond entry) -----------------------------

    def set_inpaint(self) -> None:
        """An inpainting UNet: its ``c_concat`` is the repaint mask then the masked latent."""
        self.concat_keys = ("mask", "masked_image")
        self.inpaint_model = True

    def blank_inpaint_image_like(self, latent_image: torch.Tensor) -> torch.Tensor:
        """The masked latent of an image with nothing kept (a black one), shaped like ``latent_image``."""
        blank = torch.ones_like(latent_image)
        for channel, value in enumerate(_BLACK_LATENT[: blank.shape[1]]):
            blank[:, channel] *= value
        return blank

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        """The ADM vector ``y`` for one cond entry's keywords (None: this model has none)."""
        return None

    def adm_for(self, cond: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        """:meth:`encode_adm` for model inputs ``cond`` on latents ``x``, with the defaults
        ``process_conds`` gives (size = latent size times 8), one row per batch item."""
        kwargs = {
            "width": x.shape[-1] * _ADM_PIXELS_PER_LATENT,
            "height": x.shape[-2] * _ADM_PIXELS_PER_LATENT,
            **cond,
            "noise": x,
            "device": x.device,
        }
        y = self.encode_adm(**kwargs)
        return None if y is None else repeat_to_batch_size(y.to(x.device), x.shape[0])

    def concat_cond(self, **kwargs: Any) -> torch.Tensor | None:
        """An inpainting model's ``c_concat`` (per :attr:`concat_keys`), None for other models.

        The mask is the entry's ``concat_mask`` or the sampling's ``denoise_mask`` (rounded, at
        the noise's size); the image is the entry's ``concat_latent_image`` (VAE space) or the
        sampled latent. Without a mask the model sees everything repainted over a black image.
        """
        if not self.concat_keys:
            return None
        from plugins.core_nodes.nodes.resize import upscale

        noise = kwargs["noise"]
        device = kwargs["device"]
        mask = kwargs.get("concat_mask", kwargs.get("denoise_mask"))
        image = kwargs.get("concat_latent_image")
        image = kwargs.get("latent_image") if image is None else self.process_latent_in(image)
        if image is None:
            image = torch.zeros_like(noise)
        if image.shape[1:] != noise.shape[1:]:
            image = upscale(image, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        image = resize_to_batch_size(image, noise.shape[0])
        if mask is not None:
            if mask.ndim == noise.ndim:
                mask = mask[:, :1]
            mask = mask.reshape(-1, 1, *mask.shape[-2:])
            if mask.shape[-2:] != noise.shape[-2:]:
                mask = upscale(mask, noise.shape[-1], noise.shape[-2], "bilinear", "center")
            mask = resize_to_batch_size(mask.round(), noise.shape[0])
        parts: list[torch.Tensor] = []
        for key in self.concat_keys:
            if key == "mask":
                parts.append(mask.to(device) if mask is not None else torch.ones_like(noise)[:, :1])
            elif key == "masked_image":
                parts.append(image.to(device) if mask is not None else self.blank_inpaint_image_like(noise))
            elif key == "mask_inverted":
                parts.append(1.0 - mask.to(device) if mask is not None else torch.zeros_like(noise)[:, :1])
            elif key == "concat_image":
                parts.append(image.to(device))
        return torch.cat(parts, dim=1)

    def extra_conds(self, **kwargs: Any) -> dict[str, CONDRegular]:
        """The ``model_conds`` of one cond entry: ``c_concat``, ``y``, ``c_crossattn`` (and a
        ControlNet's own ``crossattn_controlnet``), from the entry's keywords."""
        out: dict[str, CONDRegular] = {}
        concat = self.concat_cond(**kwargs)
        if concat is not None:
            out["c_concat"] = CONDNoiseShape(concat)
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = CONDRegular(adm)
        out.update(text_conds(kwargs))
        return out

    # -- running the network -----------------------------------------------------------------

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
        network = self.diffusion_model
        if self.manual_cast_dtype is not None:
            # A compute dtype (ModelComputeDtype's object patch): layers cast weights per call.
            network = casting_view(network, self.manual_cast_dtype)
        return self.denoise(x, t, cond, transformer_options or {}, network, self.model_sampling)

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
        if concat is not None:
            inputs = torch.cat([inputs, concat.to(inputs)], dim=1)
        timesteps = model_sampling.timestep(sigma).float().to(device)
        context = cond["c_crossattn"].to(device)
        y = cond.get("y")
        # A direct call may leave the ADM vector to the model (the sampler always passes it).
        y = y.to(device) if y is not None else self.adm_for(cond, xd)
        transformer_options.setdefault("sigmas", sigma.to(device))
        output = unet(inputs, timesteps, context, y, cond.get("control"), transformer_options)
        denoised = model_sampling.calculate_denoised(sigma.to(device), output.float(), xd.float())
        return denoised.to(x.device, x.dtype)


def text_conds(kwargs: Mapping[str, Any]) -> dict[str, CONDRegular]:
    """The model conds every model takes from a cond entry's keywords: the encoded text
    (``cross_attn``), a ControlNet's own text (``cross_attn_controlnet``) and channels to
    append to the input (``noise_concat``)."""
    out: dict[str, CONDRegular] = {}
    cross_attn = kwargs.get("cross_attn")
    if cross_attn is not None:
        out["c_crossattn"] = CONDCrossAttn(cross_attn)
    controlnet_text = kwargs.get("cross_attn_controlnet")
    if controlnet_text is not None:
        out["crossattn_controlnet"] = CONDCrossAttn(controlnet_text)
    noise_concat = kwargs.get("noise_concat")
    if noise_concat is not None:
        out["c_concat"] = CONDNoiseShape(noise_concat)
    return out


def _sdxl_adm(model: BaseModel, kwargs: Mapping[str, Any], refiner: bool) -> torch.Tensor | None:
    if not model.adm_channels:
        return None
    pooled_width = model.adm_channels - (5 if refiner else 6) * ADM_SCALAR_DIM
    # unCLIP image embeddings ("revision") stand in for the pooled text, noise-augmented.
    pooled = _revision_pooled(kwargs, pooled_width)
    if pooled is None:
        pooled = kwargs.get("pooled_output")
    if pooled is None:
        pooled = torch.zeros(1, pooled_width)
    pooled = pooled.to(torch.float32)
    width = float(kwargs.get("width", 768))
    height = float(kwargs.get("height", 768))
    crop_w, crop_h = float(kwargs.get("crop_w", 0)), float(kwargs.get("crop_h", 0))
    if refiner:
        default_score = 2.5 if kwargs.get("prompt_type", "") == "negative" else 6.0
        score = float(kwargs.get("aesthetic_score", default_score))
        return sdxl_adm(pooled, height, width, crop_h, crop_w, aesthetic_score=score)
    target_w = float(kwargs.get("target_width", width))
    target_h = float(kwargs.get("target_height", height))
    return sdxl_adm(pooled, height, width, crop_h, crop_w, target_h, target_w)


def _revision_pooled(kwargs: Mapping[str, Any], pooled_width: int) -> torch.Tensor | None:
    """SDXL's pooled vector from the entry's ``unclip_conditioning`` (None without images): the
    embeddings augmented as unCLIP's, at the pooled width, seed minus 10, no merge noise."""
    entries = kwargs.get("unclip_conditioning")
    if entries is None:
        return None
    from plugins.core_nodes.models.unclip import revision_augmentor, unclip_adm

    seed = kwargs.get("seed")
    device = kwargs.get("device", torch.device("cpu"))
    adm = unclip_adm(entries, device, revision_augmentor(pooled_width), 0.0, (0 if seed is None else int(seed)) - 10)
    return None if adm is None else adm[:, :pooled_width]


class _RevisionAugmentor:
    """``noise_augmentor`` of the SDXL classes (the reference's attribute): the augmentor their
    unCLIP image embeddings go through, shared and not part of the model's weights."""

    def __get__(self, model: BaseModel | None, owner: type) -> Any:
        from plugins.core_nodes.models.unclip import revision_augmentor

        refiner = isinstance(model, SDXLRefiner)
        width = model.adm_channels - (5 if refiner else 6) * ADM_SCALAR_DIM if model is not None else 0
        return revision_augmentor(width if width > 0 else 1280)


class SDXL(BaseModel):
    """SDXL base: the ADM vector is pooled text (or unCLIP image embeddings) + size, crop and
    target size."""

    noise_augmentor = _RevisionAugmentor()

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        return _sdxl_adm(self, kwargs, refiner=False)


class SDXLRefiner(BaseModel):
    """SDXL refiner: the ADM vector is pooled text (or unCLIP image embeddings) + size, crop
    and an aesthetic score."""

    noise_augmentor = _RevisionAugmentor()

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        return _sdxl_adm(self, kwargs, refiner=True)


class SD21UNCLIP(BaseModel):
    """SD2.1 unCLIP: ``y`` is the entry's ``unclip_conditioning`` image embeddings, noise-augmented
    by :attr:`noise_augmentor` (seeded with the sampling seed minus 10, several images merged at
    ``unclip_noise_augment_merge``, 0.05 by default), or zeros when the entry has none.

    ``noise_aug_config`` is the augmentor's keyword arguments (the reference's positional
    parameter); by default the unCLIP schedule at half the ADM width, the embedding's.
    """

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        noise_aug_config: Mapping[str, Any] | None = None,
        model_type: ModelType = ModelType.V_PREDICTION,
        device: torch.device | None = None,
        unet_model: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_config, model_type, device, unet_model, **kwargs)
        from plugins.core_nodes.models.unclip import UNCLIP_SCHEDULE, CLIPEmbeddingNoiseAugmentation

        if noise_aug_config is None:
            noise_aug_config = {"noise_schedule_config": UNCLIP_SCHEDULE, "timestep_dim": self.adm_channels // 2}
        self.noise_augmentor = CLIPEmbeddingNoiseAugmentation(**noise_aug_config)

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        from plugins.core_nodes.models.unclip import unclip_adm

        device = kwargs["device"]
        entries = kwargs.get("unclip_conditioning")
        adm = None
        if entries is not None:
            seed = kwargs.get("seed")
            merge = float(kwargs.get("unclip_noise_augment_merge", 0.05))
            adm = unclip_adm(entries, device, self.noise_augmentor, merge, (0 if seed is None else int(seed)) - 10)
        # No image: the model sees an all-zero ADM vector (an empty list counts as none).
        return torch.zeros((1, self.adm_channels), device=device) if adm is None else adm


# The reference's other families, by name, for packs' isinstance checks; this server loads none.
class SD15_instructpix2pix(BaseModel): ...  # noqa: N801 - the reference's name


class SDXL_instructpix2pix(SDXL): ...  # noqa: N801 - the reference's name


class SVD_img2vid(BaseModel): ...  # noqa: N801 - the reference's name


class Stable_Zero123(BaseModel): ...  # noqa: N801 - the reference's name


class SD_X4Upscaler(BaseModel): ...  # noqa: N801 - the reference's name


class StableCascade_C(BaseModel): ...  # noqa: N801 - the reference's name


class StableCascade_B(BaseModel): ...  # noqa: N801 - the reference's name


# SD3's default flow shift (the reference's sampling_settings for its SD3 config).
SD3_SHIFT = 3.0


class SD3(BaseModel):
    """SD3 / SD3.5 (an MMDiT): rectified flow (``CONST`` prediction on the shifted discrete flow
    schedule, shift 3 unless the config says otherwise); ``y`` is the entry's pooled text, and the
    text tokens go in as a regular cond: joint attention over text + image tokens is not the same
    with a repeated prompt, so prompts of different lengths are not batched together."""

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        model_type: ModelType = ModelType.FLOW,
        device: torch.device | None = None,
        unet_model: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("model_sampling") is None:
            kwargs["model_sampling"] = flow_sampling(model_config, SD3_SHIFT)
        super().__init__(model_config, model_type, device, unet_model, **kwargs)

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        return kwargs.get("pooled_output")

    def extra_conds(self, **kwargs: Any) -> dict[str, CONDRegular]:
        out = super().extra_conds(**kwargs)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = CONDRegular(cross_attn)
        return out


def flow_sampling(model_config: Any, default_shift: float) -> Any:
    """The reference's FLOW model sampling: ``ModelSamplingDiscreteFlow`` with ``CONST``, its shift
    (and multiplier) from the config's sampling settings, ``default_shift`` when they have none."""
    from plugins.core_nodes.sampling.model_sampling import (
        CONST,
        ModelSamplingDiscreteFlow,
        model_sampling_class,
    )

    settings = dict(getattr(model_config, "sampling_settings", None) or {})
    settings.setdefault("shift", default_shift)
    holder = type("_Settings", (), {"sampling_settings": settings})()
    return model_sampling_class(ModelSamplingDiscreteFlow, CONST)(holder)


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
    "sd3": SD3,
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
    "sd3": _config_class("SD3"),
}


# SD2.1 unCLIP's configs, by image embedder (the reference's SD21UnclipL / SD21UnclipH).
UNCLIP_CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    "l": _config_class("SD21UnclipL"),
    "h": _config_class("SD21UnclipH"),
}


def model_type_for(prediction: str) -> ModelType:
    if prediction == "flow":
        return ModelType.FLOW
    return ModelType.V_PREDICTION if prediction == "v" else ModelType.EPS


def reference_mmdit_config(config: MMDiTConfig) -> dict[str, Any]:
    """Our MMDiT config in the reference's ``unet_config`` keys for SD3."""
    return {
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "patch_size": config.patch_size,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "input_size": None,
        "adm_in_channels": config.adm_in_channels,
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": config.context_in_dim, "out_features": config.hidden_size},
        },
        "num_patches": config.pos_embed_max_size**2,
        "pos_embed_max_size": config.pos_embed_max_size,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": list(config.x_block_self_attn_layers),
        "qk_norm": config.qk_norm,
    }


def _build_sd3(network: MMDiT, latent_format: LatentFormat, model_sampling: Any) -> SD3:
    config = CONFIG_CLASSES["sd3"](
        reference_mmdit_config(network.config), latent_format, {"shift": SD3_SHIFT}, name="sd3"
    )
    config.memory_usage_factor = 1.6
    return SD3(config, diffusion_model=network, model_sampling=model_sampling, latent_format=latent_format)


def build_base_model(
    family_name: str,
    prediction: str,
    unet: UNetModel | MMDiT,
    latent_format: LatentFormat,
    model_sampling: ModelSamplingDiscrete | None = None,
) -> BaseModel:
    """The reference class of this family around our network (a new, thin object: the network is shared)."""
    if isinstance(unet, MMDiT):
        return _build_sd3(unet, latent_format, model_sampling)
    cls = FAMILY_CLASSES.get(family_name, BaseModel)
    config_cls = CONFIG_CLASSES.get(family_name, ModelConfig)
    model_type = model_type_for(prediction)
    parts: dict[str, Any] = {
        "diffusion_model": unet,
        "model_sampling": model_sampling or ModelSamplingDiscrete(prediction=prediction),
        "latent_format": latent_format,
    }
    adm = unet.config.adm_in_channels
    unclip = family_name == "sd2" and bool(adm)
    if unclip:
        # An SD2 UNet with an ADM input is SD2.1 unCLIP; the reference names its config by the
        # image embedder: ViT-L's 768-wide embeddings (L) or ViT-H's 1024 (H).
        config_cls = UNCLIP_CONFIG_CLASSES["l" if (adm or 0) // 2 <= 768 else "h"]
    # unCLIP configs go by the reference's class name (comfy.supported_models' isinstance reads it).
    name = config_cls.__name__ if unclip else family_name
    config = config_cls(reference_unet_config(unet.config), latent_format, {}, name=name)
    model = SD21UNCLIP(config, None, model_type, **parts) if unclip else cls(config, model_type, **parts)
    # The reference's rule: a UNet taking more than the latent's 4 channels is an inpainting one.
    if unet.config.in_channels > 4:
        model.set_inpaint()
    return model


__all__ = [
    "FAMILY_CLASSES",
    "SD3",
    "SD21UNCLIP",
    "SDXL",
    "UNCLIP_CONFIG_CLASSES",
    "BaseModel",
    "ModelConfig",
    "ModelType",
    "SDXLRefiner",
    "build_base_model",
    "model_type_for",
    "reference_unet_config",
    "text_conds",
]
