"""``comfy.controlnet``: the control objects samplers consult each step, and their loaders.

:class:`ControlBase` / :class:`ControlNet` are the server's own (``plugins.core_nodes.models.control``:
the objects ControlNetLoader gives and the sampler evaluates), so packs such as Advanced-ControlNet
subclass the classes the server uses. :func:`load_controlnet` / :func:`load_controlnet_state_dict`
load SD1.x / SD2.x / SDXL ControlNets (single-file or diffusers layout).
Control-LoRAs are loaded too (:class:`ControlLora`, built over the sampled MODEL's UNet). T2I-Adapters
are importable and subclassable, but loading them raises ``NotImplementedError``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import comfy.model_management
import comfy.utils
import torch

from plugins.core_nodes.models.control import (
    ControlBase,
    ControlIsolation,
    ControlNet,
    ControlOutput,
    StrengthType,
    broadcast_image_to,
    controlnet_from_state_dict,
)
from plugins.core_nodes.models.control import load_controlnet as _load_controlnet
from plugins.core_nodes.models.control_lora import ControlLora

log = logging.getLogger("comfykernel.compat")

NOT_SUPPORTED = "T2I-Adapters are not supported by comfykernel yet"


class ControlNetSD35(ControlNet):
    """SD3.5's ControlNet (importable; not loadable here)."""


class ControlLoraOps:
    """Mixin for ops classes whose Linear/Conv2d add a low-rank ``up @ down`` delta (Control-LoRA)."""


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


def load_controlnet_state_dict(
    state_dict: Mapping[str, Any], model: Any = None, model_options: Mapping[str, Any] | None = None
) -> ControlBase:
    """A :class:`ControlNet` over ControlNet weights already read (single-file or diffusers
    layout; ``model`` completes a "diff" ControlNet)."""
    return controlnet_from_state_dict(state_dict, model)


def load_t2i_adapter(t2i_data: Mapping[str, Any], model_options: Mapping[str, Any] | None = None) -> T2IAdapter:
    raise NotImplementedError(f"T2I-Adapter: {NOT_SUPPORTED}")


def load_controlnet(ckpt_path: str, model: Any = None, model_options: Mapping[str, Any] | None = None) -> ControlBase:
    """The ControlNet of the file at ``ckpt_path`` (``model`` completes a "diff" ControlNet)."""
    return _load_controlnet(ckpt_path, model)


__all__ = [
    "ControlBase",
    "ControlIsolation",
    "ControlLora",
    "ControlLoraOps",
    "ControlNet",
    "ControlNetSD35",
    "ControlOutput",
    "StrengthType",
    "T2IAdapter",
    "broadcast_image_to",
    "load_controlnet",
    "load_controlnet_state_dict",
    "load_t2i_adapter",
]
