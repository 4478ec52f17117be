"""The layer classes our networks are built from, and a caller's replacement set of them.

Every network here (UNet, text encoders) builds its weighted layers through an *operations*
namespace: any object with attributes ``Linear``, ``Conv2d``, ``GroupNorm``, ``LayerNorm``,
``Embedding`` (and ``Conv1d`` / ``Conv3d``) that are ``torch.nn`` layer classes or subclasses
of them, as the reference's models take ``operations=``. :class:`TorchOperations` (plain torch
layers) is the default. A pack hands its own set through ``model_options["custom_operations"]``
(ComfyUI-GGUF's layers keep quantized weights and dequantize them in ``forward``); its layers
take the same constructor arguments as torch's, and load their weights through their own
``_load_from_state_dict``, so whatever tensor type they keep stays theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# A class or an instance whose attributes are the layer classes (packs pass either).
Operations = Any


class TorchOperations:
    """The default: torch's own layers."""

    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = nn.Conv2d
    Conv3d = nn.Conv3d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding


def is_default(ops: Operations | None) -> bool:
    return ops is None or ops is TorchOperations


def custom_operations(model_options: Mapping[str, Any] | None) -> Operations | None:
    """The layer set a caller's ``model_options`` asks for, or None for ours."""
    if not model_options:
        return None
    ops = model_options.get("custom_operations")
    if ops is None:
        return None
    missing = [name for name in ("Linear", "Conv2d", "GroupNorm", "LayerNorm") if not hasattr(ops, name)]
    if missing:
        raise TypeError(
            f"model_options['custom_operations'] ({getattr(ops, '__name__', type(ops).__name__)}) "
            f"has no {', '.join(missing)} layer class"
        )
    return ops


def _plain(t: torch.Tensor | None) -> bool:
    # Exactly torch's own types: a pack's tensor subclass (quantized storage) is its business.
    return t is not None and type(t) in (torch.Tensor, nn.Parameter) and t.is_floating_point()


def cast_plain_weights(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating-point parameters and buffers that are plain torch tensors to ``dtype``,
    leaving a custom layer's own tensor types (and integer storage) as they were loaded.

    What the reference's loading into pre-allocated ``dtype`` layers amounts to for the tensors
    a custom layer does not take over itself."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if _plain(param) and param is not None and param.dtype != dtype:
                sub._parameters[name] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
        for name, buf in list(sub._buffers.items()):
            if _plain(buf) and buf is not None and buf.dtype != dtype:
                sub._buffers[name] = buf.to(dtype)


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], ops: Operations | None, strict: bool = True) -> None:
    """Put ``sd``'s tensors into a ``module`` built on the meta device: assigned, not copied, so
    the module holds the given tensors (and a custom layer's ``_load_from_state_dict`` sees them
    as they are). Parameters are made non-trainable first, so tensors that cannot carry gradients
    (integer storage) are accepted."""
    module.requires_grad_(False)
    module.load_state_dict(dict(sd), strict=strict, assign=True)
    if not is_default(ops):
        _left_on_meta(module)


def _left_on_meta(module: nn.Module) -> None:
    # A custom layer may keep a tensor its state dict did not fill; one left on the meta device
    # would fail only when the model runs, so say which now.
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_meta:
            raise KeyError(f"no weight loaded for {name}")


__all__ = ["Operations", "TorchOperations", "cast_plain_weights", "custom_operations", "is_default", "load_into"]
