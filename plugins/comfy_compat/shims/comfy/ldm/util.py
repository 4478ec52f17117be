"""``comfy.ldm.util``: the small helpers of the reference's latent-diffusion code."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def exists(x: Any) -> bool:
    return x is not None


def default(val: T | None, d: T | Callable[[], T]) -> T:
    """``val`` unless it is None; otherwise ``d`` (called first when it is a function)."""
    if val is not None:
        return val
    return d() if callable(d) else d  # type: ignore[return-value]


def ismap(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] > 3


def isimage(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] in (1, 3)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def count_params(model: torch.nn.Module, verbose: bool = False) -> int:
    return sum(p.numel() for p in model.parameters())


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    module, _, name = string.rpartition(".")
    mod = importlib.import_module(module)
    if reload:
        mod = importlib.reload(mod)
    return getattr(mod, name)


def instantiate_from_config(config: Mapping[str, Any]) -> Any:
    """``target(**params)`` for a ``{"target": "pkg.Class", "params": {...}}`` config."""
    if "target" not in config:
        if config in ("__is_first_stage__", "__is_unconditional__"):
            return None
        raise KeyError("Expected key `target` to instantiate.")
    return get_obj_from_str(config["target"])(**config.get("params", {}))
