"""``comfy.controlnet``: the control objects samplers consult each step, and their loaders.

:class:`ControlBase` / :class:`ControlNet` are the server's own (``plugins.core_nodes.models.control``:
the objects ControlNetLoader gives and the sampler evaluates), so packs such as Advanced-ControlNet
subclass the classes the server uses. :func:`load_controlnet` / :func:`load_controlnet_state_dict`
load SD1.x / SD2.x / SDXL ControlNets (single-file or diffusers layout).
Control-LoRAs (:class:`ControlLora`, built over the sampled MODEL's UNet) and SD1.x full
T2I-Adapters (:class:`T2IAdapter`) load too; light, style and SDXL T2I-Adapters are refused clearly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
from plugins.core_nodes.models.t2i_adapter import T2IAdapter, build_adapter, wrap_adapter


class ControlNetSD35(ControlNet):
    """SD3.5's ControlNet (importable; not loadable here)."""


class ControlLoraOps:
    """Mixin for ops classes whose Linear/Conv2d add a low-rank ``up @ down`` delta (Control-LoRA)."""


def load_controlnet_state_dict(
    state_dict: Mapping[str, Any], model: Any = None, model_options: Mapping[str, Any] | None = None
) -> ControlBase:
    """A :class:`ControlNet` over ControlNet weights already read (single-file or diffusers
    layout; ``model`` completes a "diff" ControlNet)."""
    return controlnet_from_state_dict(state_dict, model)


def load_t2i_adapter(t2i_data: Mapping[str, Any], model_options: Mapping[str, Any] | None = None) -> T2IAdapter:
    """A :class:`T2IAdapter` over full-adapter weights (original or diffusers layout); a
    ``.pth`` file's nested ``{"adapter": {...}}`` is accepted too."""
    if isinstance(t2i_data.get("adapter"), Mapping):
        t2i_data = t2i_data["adapter"]
    return wrap_adapter(build_adapter(t2i_data))


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
