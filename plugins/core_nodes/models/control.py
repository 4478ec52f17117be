"""CONTROL_NET values: the control objects the sampler consults at each model call.

The classes carry the reference's API and state (``comfy.controlnet.ControlBase`` /
``ControlNet``), so packs such as Advanced-ControlNet subclass them and Impact / tinyterra pass
them around: a hint image with ``strength`` and ``timestep_percent_range``, chaining through
``previous_controlnet``, ``pre_run`` (percents to sigmas, the MODEL's schedule) / ``cleanup``
around a run, and ``get_control(x_noisy, t, cond, batched_number, transformer_options)`` giving
``{"input": [...], "middle": [...], "output": [...]}`` residuals for the UNet call.

``t`` is the sigma of the call (the reference's samplers pass sigmas), and so is every bound of
``timestep_range``: ``pre_run`` is handed ``model_sampling.percent_to_sigma``.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plugins.core_nodes.models.controlnet import ControlNetModel, build_controlnet, is_controlnet

log = logging.getLogger("comfykernel.core_nodes")

ControlOutput = dict[str, list[torch.Tensor | None]]


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """Fit a hint batch to a model batch made of ``batched_number`` copies (cond, uncond...)."""
    if tensor.shape[0] == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        whole, rest = divmod(per_batch, tensor.shape[0])
        tensor = torch.cat([tensor] * whole + [tensor[:rest]], dim=0)
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


def upscale_hint(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` center-cropped to the aspect ratio and resized (the reference's
    ``common_upscale(..., "center")``)."""
    from plugins.core_nodes.nodes.resize import upscale

    return upscale(image, width, height, method, "center")


class StrengthType(enum.Enum):
    CONSTANT = 1
    LINEAR_UP = 2


class ControlIsolation:
    """Context manager: detach ``control.previous_controlnet`` for the block (no chained calls)."""

    def __init__(self, control: ControlBase) -> None:
        self.control = control
        self.orig_previous_controlnet = control.previous_controlnet

    def __enter__(self) -> None:
        self.control.previous_controlnet = None

    def __exit__(self, *args: Any) -> None:
        self.control.previous_controlnet = self.orig_previous_controlnet


class ControlBase:
    """State shared by every control: the hint and how strongly and when it applies."""

    def __init__(self) -> None:
        self.cond_hint_original: Any = None
        self.cond_hint: Any = None
        self.strength = 1.0
        self.timestep_percent_range: tuple[float, float] = (0.0, 1.0)
        self.latent_format: Any = None
        self.vae: Any = None
        self.global_average_pooling = False
        self.timestep_range: tuple[Any, Any] | None = None
        self.compression_ratio = 8
        self.upscale_algorithm = "nearest-exact"
        self.extra_args: dict[str, Any] = {}
        self.previous_controlnet: ControlBase | None = None
        self.extra_conds: list[str] = []
        self.strength_type = StrengthType.CONSTANT
        self.concat_mask = False
        self.extra_concat_orig: list[Any] = []
        self.extra_concat: Any = None
        self.extra_hooks: Any = None
        self.preprocess_image: Callable[[Any], Any] = lambda a: a
        self.multigpu_clones: dict[Any, ControlBase] = {}

    def set_cond_hint(
        self,
        cond_hint: Any,
        strength: float = 1.0,
        timestep_percent_range: tuple[float, float] = (0.0, 1.0),
        vae: Any = None,
        extra_concat: Sequence[Any] = (),
    ) -> ControlBase:
        """Set the hint (``[B, C, H, W]``), its strength and percent range; returns ``self``."""
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        if self.latent_format is not None:
            if vae is None:
                log.warning("no VAE provided to the controlnet apply node when this controlnet requires one")
            self.vae = vae
        self.extra_concat_orig = list(extra_concat)
        if self.concat_mask and not self.extra_concat_orig:
            self.extra_concat_orig.append(torch.tensor([[[[1.0]]]]))
        return self

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], Any]) -> None:
        start, end = self.timestep_percent_range
        self.timestep_range = (percent_to_timestep_function(start), percent_to_timestep_function(end))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def set_previous_controlnet(self, controlnet: ControlBase | None) -> ControlBase:
        self.previous_controlnet = controlnet
        return self

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        for clone in self.multigpu_clones.values():
            with ControlIsolation(clone):
                clone.cleanup()
        self.cond_hint = None
        self.extra_concat = None
        self.timestep_range = None

    def get_models(self) -> list[Any]:
        out: list[Any] = []
        for clone in self.multigpu_clones.values():
            out += clone.get_models_only_self()
        if self.previous_controlnet is not None:
            out += self.previous_controlnet.get_models()
        return out

    def get_models_only_self(self) -> list[Any]:
        with ControlIsolation(self):
            return self.get_models()

    def get_instance_for_device(self, device: Any) -> ControlBase:
        return self.multigpu_clones.get(device, self)

    def deepclone_multigpu(self, load_device: Any, autoregister: bool = False) -> ControlBase:
        raise NotImplementedError("Classes inheriting from ControlBase should define their own deepclone_multigpu function.")

    def get_extra_hooks(self) -> list[Any]:
        out = [self.extra_hooks] if self.extra_hooks is not None else []
        if self.previous_controlnet is not None:
            out += self.previous_controlnet.get_extra_hooks()
        return out

    def copy_to(self, c: ControlBase) -> None:
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range
        c.global_average_pooling = self.global_average_pooling
        c.compression_ratio = self.compression_ratio
        c.upscale_algorithm = self.upscale_algorithm
        c.latent_format = self.latent_format
        c.extra_args = dict(self.extra_args)
        c.vae = self.vae
        c.extra_conds = list(self.extra_conds)
        c.strength_type = self.strength_type
        c.concat_mask = self.concat_mask
        c.extra_concat_orig = list(self.extra_concat_orig)
        c.extra_hooks = self.extra_hooks.clone() if self.extra_hooks else None
        c.preprocess_image = self.preprocess_image

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        if self.previous_controlnet is not None:
            return self.previous_controlnet.inference_memory_requirements(dtype)
        return 0

    def active(self, t: torch.Tensor) -> bool:
        """Whether sigma ``t[0]`` lies in this control's range (always, before ``pre_run``)."""
        if self.timestep_range is None:
            return True
        return not (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1])

    def control_merge(
        self,
        control: Mapping[str, Sequence[Any]],
        control_prev: Mapping[str, Sequence[Any]] | None,
        output_dtype: torch.dtype | None,
    ) -> ControlOutput:
        """Scale this control's residuals by the strength (once per shared tensor) and add the
        previous control's residuals position by position."""
        out: ControlOutput = {"input": [], "middle": [], "output": []}
        for key, residuals in control.items():
            # A tensor listed twice (shared between positions) is scaled only once; ids are
            # stable here because ``residuals`` keeps every tensor alive during the loop.
            scaled: set[int] = set()
            for i, x in enumerate(residuals):
                if x is not None:
                    if self.global_average_pooling:
                        x = torch.mean(x, dim=(2, 3), keepdim=True).repeat(1, 1, x.shape[2], x.shape[3])
                    if id(x) not in scaled:
                        scaled.add(id(x))
                        if self.strength_type == StrengthType.CONSTANT:
                            x *= self.strength
                        elif self.strength_type == StrengthType.LINEAR_UP:
                            x *= self.strength ** float(len(residuals) - i)
                    if output_dtype is not None and x.dtype != output_dtype:
                        x = x.to(output_dtype)
                out.setdefault(key, []).append(x)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                merged = out[key]
                for i, prev in enumerate(control_prev.get(key, ())):
                    if i >= len(merged):
                        merged.append(prev)
                    elif prev is not None:
                        merged[i] = prev if merged[i] is None else prev + merged[i]
        return out

    def set_extra_arg(self, argument: str, value: Any = None) -> None:
        self.extra_args[argument] = value


def _patcher(model: torch.nn.Module | None, load_device: Any) -> Any:
    """The module wrapped as a MODEL-like patcher (what ``get_models`` lists), or None."""
    if model is None:
        return None
    from plugins.core_nodes.models.patcher import ModelPatcher

    return ModelPatcher(model, load_device=load_device, offload_device=torch.device("cpu"))


def _compute_device(module: torch.nn.Module) -> contextlib.AbstractContextManager[torch.device]:
    """The network on the server's compute device for the block (through the model manager,
    which makes room and counts it as used); outside a server, where its weights are."""
    from plugins.core_nodes.models import adapters

    return adapters._using(adapters._manager(), [module])


class ControlNet(ControlBase):
    """A ControlNet network driven by the sampler's noisy latent, sigma and text context."""

    def __init__(
        self,
        control_model: torch.nn.Module | None = None,
        global_average_pooling: bool = False,
        compression_ratio: int = 8,
        latent_format: Any = None,
        load_device: Any = None,
        manual_cast_dtype: torch.dtype | None = None,
        extra_conds: Sequence[str] = ("y",),
        strength_type: StrengthType = StrengthType.CONSTANT,
        concat_mask: bool = False,
        preprocess_image: Callable[[Any], Any] = lambda a: a,
    ) -> None:
        super().__init__()
        self.control_model = control_model
        self.load_device = load_device
        self.control_model_wrapped = _patcher(control_model, load_device)
        self.compression_ratio = compression_ratio
        self.global_average_pooling = global_average_pooling
        self.model_sampling_current: Any = None
        self.manual_cast_dtype = manual_cast_dtype
        self.latent_format = latent_format
        self.extra_conds += list(extra_conds)
        self.strength_type = strength_type
        self.concat_mask = concat_mask
        self.preprocess_image = preprocess_image

    def _hint_for(self, x_noisy: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The hint resized to the latent times the compression ratio (cached per size)."""
        hint = self.cond_hint
        if hint is None or tuple(hint.shape[2:]) != (x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio):
            ratio = self.compression_ratio
            if self.vae is not None:
                ratio *= self.vae.spacial_compression_encode()
            elif self.latent_format is not None:
                raise ValueError("This Controlnet needs a VAE but none was provided, please use a ControlNetApply node with a VAE input and connect it.")
            if self.cond_hint_original is None:
                raise ValueError("this ControlNet has no hint image: call set_cond_hint first")
            hint = upscale_hint(self.cond_hint_original, x_noisy.shape[-1] * ratio, x_noisy.shape[-2] * ratio, self.upscale_algorithm)
            hint = self.preprocess_image(hint)
            if self.vae is not None:
                hint = self.vae.encode(hint.movedim(1, -1))
            if self.latent_format is not None:
                hint = self.latent_format.process_in(hint)
            if self.extra_concat_orig:
                extra = []
                for c in self.extra_concat_orig:
                    c = upscale_hint(c.to(hint.device), hint.shape[-1], hint.shape[-2], self.upscale_algorithm)
                    extra.append(c.repeat(-(-hint.shape[0] // c.shape[0]), 1, 1, 1)[: hint.shape[0]])
                hint = torch.cat([hint, *extra], dim=1)
            hint = hint.to(device=x_noisy.device, dtype=dtype)
        self.cond_hint = hint
        return hint

    def get_control(
        self,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        cond: Mapping[str, Any],
        batched_number: int,
        transformer_options: Any = None,
    ) -> Any:
        """This control's residuals for the call (added to the previous control's), or only the
        previous control's when sigma ``t`` is outside the percent range."""
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if not self.active(t):
            return control_prev
        if self.control_model is None:
            raise ValueError("this ControlNet has no network loaded")
        if self.model_sampling_current is None:
            raise ValueError("ControlNet.get_control called before pre_run (no model schedule)")
        dtype = self.manual_cast_dtype or getattr(self.control_model, "dtype", x_noisy.dtype)
        hint = self._hint_for(x_noisy, dtype)
        if x_noisy.shape[0] != hint.shape[0]:
            self.cond_hint = hint = broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        sigma = t.reshape(-1).float()
        if sigma.numel() == 1 and x_noisy.shape[0] > 1:
            sigma = sigma.expand(x_noisy.shape[0])
        timestep = self.model_sampling_current.timestep(sigma.cpu())
        x_in = self.model_sampling_current.calculate_input(sigma.to(x_noisy.device), x_noisy)
        with _compute_device(self.control_model) as device:
            extra_args = dict(self.extra_args)
            for name in self.extra_conds:
                value = cond.get(name)
                if value is not None:
                    extra_args[name] = value.to(device, dtype) if isinstance(value, torch.Tensor) else value
            control = self.control_model(
                x=x_in.to(device, dtype),
                hint=hint.to(device),
                timesteps=timestep.to(device).float(),
                context=context.to(device, dtype),
                **extra_args,
            )
        control = {k: [None if r is None else r.to(x_noisy.device) for r in v] for k, v in control.items()}
        return self.control_merge(control, control_prev, output_dtype=None)

    def copy(self) -> ControlNet:
        c = ControlNet(None, global_average_pooling=self.global_average_pooling, load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        self.copy_to(c)
        return c

    def deepclone_multigpu(self, load_device: Any, autoregister: bool = False) -> ControlNet:
        c = self.copy()
        c.control_model = copy.deepcopy(c.control_model)
        c.control_model_wrapped = _patcher(c.control_model, load_device)
        if autoregister:
            self.multigpu_clones[load_device] = c
        return c

    def get_models(self) -> list[Any]:
        out = super().get_models()
        if self.control_model_wrapped is not None:
            out.append(self.control_model_wrapped)
        return out

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], Any]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self) -> None:
        self.model_sampling_current = None
        super().cleanup()


class ControlNetLoadError(ValueError):
    """A ControlNet file this server cannot load (named in the message)."""


def _apply_difference(weights: dict[str, torch.Tensor], model: Any, name: str) -> dict[str, torch.Tensor]:
    """A "diff" ControlNet stores its encoder as the difference from its base UNet: add the
    MODEL's UNet weights of the same names back."""
    if model is None:
        log.warning("%s is a diff ControlNet but no model was given: loaded as it is", name)
        return weights
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        unet = getattr(model, "unet", None)
    if unet is None:
        raise ControlNetLoadError(f"{name}: a diff ControlNet needs a MODEL with a UNet")
    base = unet.state_dict()
    out = {}
    for key, value in weights.items():
        plain = key[len("control_model.") :] if key.startswith("control_model.") else key
        if plain in base and base[plain].shape == value.shape:
            value = value.to(base[plain].dtype) + base[plain].to(value.device)
        out[key] = value
    return out


def network_from_state_dict(sd: Mapping[str, torch.Tensor], model: Any = None, name: str = "the ControlNet weights") -> ControlNetModel:
    """The ControlNet network of these weights (single-file or diffusers layout, "diff" files
    completed from ``model``'s UNet)."""
    from plugins.core_nodes.models.controlnet import ControlNetError

    weights = dict(sd)
    if not is_controlnet(weights):
        raise ControlNetLoadError(f"{name} holds no ControlNet weights (T2I-Adapters are not supported)")
    if "difference" in weights:
        weights.pop("difference")
        weights = _apply_difference(weights, model, name)
    try:
        return build_controlnet(weights, dtype=torch.float32)
    except ControlNetError as exc:
        raise ControlNetLoadError(f"{name}: {exc}") from None


def _wrap(network: torch.nn.Module, path: str | Path | None) -> ControlNet:
    from plugins.core_nodes.models.controlnet_flux import FluxControlNet
    from plugins.core_nodes.models.controlnet_mmdit import MMDiTControlNet

    if isinstance(network, MMDiTControlNet):
        return _wrap_mmdit(network)
    if isinstance(network, FluxControlNet):
        return _wrap_flux(network)
    stem = Path(path).stem if path else ""
    # The reference recognises shuffle models by file name: their residuals are averaged spatially.
    pooling = stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")
    return ControlNet(network, global_average_pooling=pooling, load_device=torch.device("cpu"))


def _wrap_mmdit(network: torch.nn.Module) -> ControlNet:
    """An SD3 ControlNet: its hint is the VAE-encoded image at latent size, scaled but (as these
    ControlNets were trained) not shifted; 17 hint channels are an inpainting ControlNet's
    latent + mask."""
    from dataclasses import replace

    from plugins.core_nodes.models.latent_formats import SD3

    hint_channels = network.pos_embed_input.proj.weight.shape[1]
    return ControlNet(
        network,
        compression_ratio=1,
        latent_format=replace(SD3, shift_factor=0.0),
        load_device=torch.device("cpu"),
        concat_mask=hint_channels == 17,
    )


def _wrap_flux(network: torch.nn.Module) -> ControlNet:
    """A Flux (InstantX / Union) ControlNet: its hint is the VAE-encoded image in the Flux latent
    format; it reads the pooled text and the distilled guidance too."""
    from plugins.core_nodes.models.latent_formats import FLUX

    hint_channels = network.pos_embed_input.weight.shape[1] // 4
    return ControlNet(
        network,
        compression_ratio=1,
        latent_format=FLUX,
        load_device=torch.device("cpu"),
        concat_mask=hint_channels == 17,
        extra_conds=("y", "guidance"),
    )


def _family_network(sd: Mapping[str, torch.Tensor], name: str) -> torch.nn.Module | None:
    """The network of a ControlNet of the transformer families (SD3, Flux), or None for other files."""
    from plugins.core_nodes.models.controlnet_flux import (
        FluxControlNetError,
        build_flux_controlnet,
        is_flux_controlnet,
    )
    from plugins.core_nodes.models.controlnet_mmdit import (
        MMDiTControlNetError,
        build_mmdit_controlnet,
        is_mmdit_controlnet,
    )

    try:
        if is_mmdit_controlnet(sd):
            return build_mmdit_controlnet(sd, dtype=torch.float32)
        if is_flux_controlnet(sd):
            return build_flux_controlnet(sd, dtype=torch.float32)
    except (MMDiTControlNetError, FluxControlNetError) as exc:
        raise ControlNetLoadError(f"{name}: {exc}") from None
    return None


def controlnet_from_state_dict(
    sd: Mapping[str, torch.Tensor], model: Any = None, name: str = "the ControlNet weights", path: str | Path | None = None
) -> ControlBase:
    """A :class:`ControlNet` over these weights, a Control-LoRA or a T2I-Adapter (not cached: there is no
    file to key it by)."""
    from plugins.core_nodes.models.control_lora import ControlLora, is_control_lora
    from plugins.core_nodes.models.t2i_adapter import build_adapter, is_t2i_adapter, wrap_adapter

    if is_control_lora(sd):
        return ControlLora(dict(sd))
    if not is_controlnet(sd) and is_t2i_adapter(sd):
        return wrap_adapter(build_adapter(sd, name))
    family = _family_network(sd, name)
    if family is not None:
        return _wrap(family, path)
    return _wrap(network_from_state_dict(sd, model, name), path)


def load_controlnet(path: str | Path, model: Any = None) -> ControlBase:
    """ControlNetLoader / DiffControlNetLoader: a fresh :class:`ControlNet` over the file's
    network (kept by the model manager, so one file is read once)."""
    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.checkpoint import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ControlNet file not found: {path.name}")

    from plugins.core_nodes.models.control_lora import ControlLora, is_control_lora
    from plugins.core_nodes.models.t2i_adapter import Adapter, build_adapter, is_t2i_adapter, wrap_adapter

    def build(p: Path, check: Callable[[], None], with_model: Any = None) -> torch.nn.Module | Adapter | dict[str, torch.Tensor]:
        sd, _ = load_state_dict(p, check)
        if is_control_lora(sd):
            # A Control-LoRA is only weights until a MODEL is sampled: those are what is kept.
            return sd
        if not is_controlnet(sd) and is_t2i_adapter(sd):
            return build_adapter(sd, path.name)
        family = _family_network(sd, path.name)
        if family is not None:
            return family
        return network_from_state_dict(sd, with_model, path.name)

    # A diff ControlNet depends on the MODEL's weights: built per call, not cached by file.
    built = adapters._load("controlnet", path, build) if model is None else build(path, lambda: None, model)
    if isinstance(built, dict):
        return ControlLora(built)
    if isinstance(built, Adapter):
        return wrap_adapter(built)
    return _wrap(built, path)
