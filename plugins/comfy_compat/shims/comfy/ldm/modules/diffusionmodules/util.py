"""`comfy.ldm.modules.diffusionmodules.util`: the sinusoidal timestep embedding and small helpers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.unet import timestep_embedding


def zero_module(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (returned for chaining)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


__all__ = ["avg_pool_nd", "conv_nd", "linear", "timestep_embedding", "zero_module"]
