"""``comfy.controlnet``: the control objects samplers consult each step, and their loaders.

:class:`ControlBase` and its subclasses carry the reference's state and merging logic (hint,
strength, percent range, chaining through ``previous_controlnet``, ``control_merge``), so packs
such as Advanced-ControlNet can subclass them. Loading ControlNet / T2I-Adapter / Control-LoRA
weights is not offered yet: :func:`load_controlnet` and friends raise ``NotImplementedError``
naming the file, and a :class:`ControlLora` cannot build its network.
"""

from __future__ import annotations

import copy
import enum
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import comfy.model_management
import comfy.utils
import torch
from comfy.cldm.cldm import NOT_SUPPORTED

log = logging.getLogger("comfykernel.compat")

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

    def control_merge(self, control: Mapping[str, Sequence[Any]], control_prev: Mapping[str, Sequence[Any]] | None, output_dtype: torch.dtype | None) -> ControlOutput:
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
                out[key].append(x)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                merged = out[key]
                for i, prev in enumerate(control_prev[key]):
                    if i >= len(merged):
                        merged.append(prev)
                    elif prev is not None:
                        merged[i] = prev if merged[i] is None else prev + merged[i]
        return out

    def set_extra_arg(self, argument: str, value: Any = None) -> None:
        self.extra_args[argument] = value


def _patcher(model: torch.nn.Module, load_device: Any) -> Any:
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
    )


class ControlNet(ControlBase):
    """A ControlNet network driven by the sampler's noisy latent, timestep and context."""

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
        if control_model is not None:
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

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any], batched_number: int, transformer_options: Any = None) -> Any:
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        if self.control_model is None:
            raise NotImplementedError(NOT_SUPPORTED)
        dtype = self.manual_cast_dtype or getattr(self.control_model, "dtype", x_noisy.dtype)
        if self.cond_hint is None or x_noisy.shape[2] * self.compression_ratio != self.cond_hint.shape[2] or x_noisy.shape[3] * self.compression_ratio != self.cond_hint.shape[3]:
            ratio = self.compression_ratio
            if self.vae is not None:
                ratio *= self.vae.spacial_compression_encode()
            elif self.latent_format is not None:
                raise ValueError("This Controlnet needs a VAE but none was provided, please use a ControlNetApply node with a VAE input and connect it.")
            hint = comfy.utils.common_upscale(self.cond_hint_original, x_noisy.shape[-1] * ratio, x_noisy.shape[-2] * ratio, self.upscale_algorithm, "center")
            hint = self.preprocess_image(hint)
            if self.vae is not None:
                hint = self.vae.encode(hint.movedim(1, -1))
            if self.latent_format is not None:
                hint = self.latent_format.process_in(hint)
            if self.extra_concat_orig:
                extra = []
                for c in self.extra_concat_orig:
                    c = comfy.utils.common_upscale(c.to(hint.device), hint.shape[-1], hint.shape[-2], self.upscale_algorithm, "center")
                    extra.append(comfy.utils.repeat_to_batch_size(c, hint.shape[0]))
                hint = torch.cat([hint, *extra], dim=1)
            self.cond_hint = hint.to(device=x_noisy.device, dtype=dtype)
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        extra_args = dict(self.extra_args)
        for name in self.extra_conds:
            value = cond.get(name)
            if value is not None:
                extra_args[name] = value.to(x_noisy.device, dtype) if isinstance(value, torch.Tensor) else value
        timestep = self.model_sampling_current.timestep(t)
        x_in = self.model_sampling_current.calculate_input(t, x_noisy)
        control = self.control_model(
            x=x_in.to(dtype), hint=self.cond_hint, timesteps=timestep.to(dtype),
            context=comfy.model_management.cast_to_device(context, x_noisy.device, dtype), **extra_args,
        )
        return self.control_merge(control, control_prev, output_dtype=None)

    def copy(self) -> ControlNet:
        c = ControlNet(None, global_average_pooling=self.global_average_pooling, load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
        c.control_model = self.control_model
        c.control_model_wrapped = getattr(self, "control_model_wrapped", None)
        self.copy_to(c)
        return c

    def deepclone_multigpu(self, load_device: Any, autoregister: bool = False) -> ControlNet:
        c = self.copy()
        c.control_model = copy.deepcopy(c.control_model)
        if c.control_model is not None:
            c.control_model_wrapped = _patcher(c.control_model, load_device)
        if autoregister:
            self.multigpu_clones[load_device] = c
        return c

    def get_models(self) -> list[Any]:
        out = super().get_models()
        wrapped = getattr(self, "control_model_wrapped", None)
        if wrapped is not None:
            out.append(wrapped)
        return out

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], Any]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self) -> None:
        self.model_sampling_current = None
        super().cleanup()


class ControlNetSD35(ControlNet):
    """SD3.5's ControlNet (importable; not loadable here)."""


class ControlLoraOps:
    """Mixin for ops classes whose Linear/Conv2d add a low-rank ``up @ down`` delta (Control-LoRA)."""


class ControlLora(ControlNet):
    """A Control-LoRA: low-rank ControlNet weights applied over the model's own UNet."""

    def __init__(self, control_weights: Mapping[str, torch.Tensor], global_average_pooling: bool = False, model_options: Mapping[str, Any] | None = None) -> None:
        ControlBase.__init__(self)
        self.control_weights = control_weights
        self.global_average_pooling = global_average_pooling
        self.extra_conds += ["y"]
        self.control_model = None
        self.manual_cast_dtype = None
        self.model_sampling_current = None
        self.load_device = None

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], Any]) -> None:
        raise NotImplementedError(f"Control-LoRA: {NOT_SUPPORTED}")

    def copy(self) -> ControlLora:
        c = ControlLora(self.control_weights, global_average_pooling=self.global_average_pooling)
        self.copy_to(c)
        return c

    def cleanup(self) -> None:
        self.control_model = None
        super().cleanup()

    def get_models(self) -> list[Any]:
        return ControlBase.get_models(self)

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        own = comfy.utils.calculate_parameters(self.control_weights) * comfy.model_management.dtype_size(dtype)
        return own + ControlBase.inference_memory_requirements(self, dtype)


class T2IAdapter(ControlBase):
    """A T2I-Adapter: computes its residuals once per hint size, independent of the timestep."""

    def __init__(self, t2i_model: Any, channels_in: int, compression_ratio: int, upscale_algorithm: str, device: Any = None) -> None:
        super().__init__()
        self.t2i_model = t2i_model
        self.channels_in = channels_in
        self.control_input: Any = None
        self.compression_ratio = compression_ratio
        self.upscale_algorithm = upscale_algorithm
        self.device = comfy.model_management.get_torch_device() if device is None else device

    def scale_image_to(self, width: int, height: int) -> tuple[int, int]:
        step = self.t2i_model.unshuffle_amount
        return math.ceil(width / step) * step, math.ceil(height / step) * step

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any], batched_number: int, transformer_options: Any = None) -> Any:
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        if self.cond_hint is None or x_noisy.shape[2] * self.compression_ratio != self.cond_hint.shape[2] or x_noisy.shape[3] * self.compression_ratio != self.cond_hint.shape[3]:
            self.control_input = None
            width, height = self.scale_image_to(x_noisy.shape[3] * self.compression_ratio, x_noisy.shape[2] * self.compression_ratio)
            hint = comfy.utils.common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm, "center").float().to(self.device)
            if self.channels_in == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            self.cond_hint = hint
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        if self.control_input is None:
            self.t2i_model.to(x_noisy.dtype).to(self.device)
            self.control_input = self.t2i_model(self.cond_hint.to(x_noisy.dtype))
        fresh = {k: [None if a is None else a.clone() for a in v] for k, v in self.control_input.items()}
        return self.control_merge(fresh, control_prev, x_noisy.dtype)

    def copy(self) -> T2IAdapter:
        c = T2IAdapter(self.t2i_model, self.channels_in, self.compression_ratio, self.upscale_algorithm)
        self.copy_to(c)
        return c

    def deepclone_multigpu(self, load_device: Any, autoregister: bool = False) -> T2IAdapter:
        c = self.copy()
        c.t2i_model = copy.deepcopy(c.t2i_model)
        c.device = load_device
        if autoregister:
            self.multigpu_clones[load_device] = c
        return c


def load_controlnet_state_dict(state_dict: Mapping[str, Any], model: Any = None, model_options: Mapping[str, Any] | None = None) -> ControlBase:
    raise NotImplementedError(NOT_SUPPORTED)


def load_t2i_adapter(t2i_data: Mapping[str, Any], model_options: Mapping[str, Any] | None = None) -> T2IAdapter:
    raise NotImplementedError(f"T2I-Adapter: {NOT_SUPPORTED}")


def load_controlnet(ckpt_path: str, model: Any = None, model_options: Mapping[str, Any] | None = None) -> ControlBase:
    """Refused for now with ``NotImplementedError`` naming ``ckpt_path``."""
    raise NotImplementedError(f"{NOT_SUPPORTED} (asked to load {ckpt_path})")
