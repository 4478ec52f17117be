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

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
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


def _cast_pair(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The layer's weight and bias in the input's dtype and on its device (the stored ones when
    they already are: no copy)."""
    weight = getattr(layer, "weight", None)
    bias = getattr(layer, "bias", None)
    if weight is not None:
        weight = weight.to(device=x.device, dtype=x.dtype)
    if bias is not None:
        bias = bias.to(device=x.device, dtype=x.dtype)
    return weight, bias


class CastLinear(nn.Linear):
    """``nn.Linear`` computing in its input's dtype: the stored weight is cast for each call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        weight, bias = _cast_pair(self, input)
        assert weight is not None
        return F.linear(input, weight, bias)


class _CastConv:
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        weight, bias = _cast_pair(self, input)  # type: ignore[arg-type]
        return self._conv_forward(input, weight, bias)  # type: ignore[attr-defined]


class CastConv1d(_CastConv, nn.Conv1d):
    """``nn.Conv1d`` computing in its input's dtype."""


class CastConv2d(_CastConv, nn.Conv2d):
    """``nn.Conv2d`` computing in its input's dtype."""


class CastConv3d(_CastConv, nn.Conv3d):
    """``nn.Conv3d`` computing in its input's dtype."""


class CastGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computing in its input's dtype."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        weight, bias = _cast_pair(self, input)
        return F.group_norm(input, self.num_groups, weight, bias, self.eps)


class CastLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computing in its input's dtype."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        weight, bias = _cast_pair(self, input)
        return F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)


class CastOperations:
    """Layers that cast their stored weights to the input's dtype at each call (the reference's
    ``manual_cast`` set): a network stored in one dtype computes in another without a second
    copy of its weights. Embedding lookups need no cast and stay torch's."""

    Linear = CastLinear
    Conv1d = CastConv1d
    Conv2d = CastConv2d
    Conv3d = CastConv3d
    GroupNorm = CastGroupNorm
    LayerNorm = CastLayerNorm
    Embedding = nn.Embedding


# Each plain torch layer class and its casting twin (same state, so an instance can be re-classed).
_CAST_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: CastLinear,
    nn.Conv1d: CastConv1d,
    nn.Conv2d: CastConv2d,
    nn.Conv3d: CastConv3d,
    nn.GroupNorm: CastGroupNorm,
    nn.LayerNorm: CastLayerNorm,
}


def streaming_class(module: nn.Module) -> type[nn.Module] | None:
    """The class that lets ``module`` run with its weights left on another device (they are cast
    to the input's device and dtype at each call): a plain torch layer's casting twin, a casting
    layer's own class; None for anything else (it must sit where it computes)."""
    twin = _CAST_TWINS.get(type(module))
    if twin is not None:
        return twin
    if isinstance(module, tuple(_CAST_TWINS.values())):
        return type(module)
    return None


def casting_view(module: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``module``'s tree (module objects only: every parameter and buffer is shared)
    whose layers cast their weights to their input's dtype at each call; with ``compute_dtype``,
    the copy's ``compute_dtype`` (what our networks cast their inputs to) is set to it.

    Plain torch layers become their :class:`CastOperations` twins; a pack's layer that has the
    reference's ``comfy_cast_weights`` switch gets it turned on (its own forward then casts, as
    the reference forces for a MODEL with a compute dtype); any other module is copied as is.
    ``module`` itself is left untouched, so the cached network stays as loaded."""
    twin = _casting_copy(module)
    if compute_dtype is not None and hasattr(twin, "compute_dtype"):
        twin.compute_dtype = compute_dtype
    return twin


def _casting_copy(module: nn.Module) -> nn.Module:
    twin = copy.copy(module)
    for table in ("_modules", "_parameters", "_buffers"):
        twin.__dict__[table] = dict(module.__dict__[table])
    cast = _CAST_TWINS.get(type(module))
    if cast is not None:
        twin.__class__ = cast
    elif hasattr(module, "comfy_cast_weights"):
        twin.comfy_cast_weights = True
    for name, child in module._modules.items():
        if child is not None:
            twin._modules[name] = _casting_copy(child)
    return twin


# The fp8 storage dtypes, and UNETLoader's weight_dtype choices that keep the weights in one.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_STORAGE = {
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def fp8_layer_weights(
    weights: Mapping[str, torch.Tensor], storage: torch.dtype, keep: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """``weights`` with the layer matrices and kernels (two axes or more) stored as ``storage``;
    vectors (biases, norm scales) and the ``keep`` keys stay as they are, as the reference's fp8
    storage keeps them precise. Cast back per call by :class:`CastOperations` layers."""
    return {
        k: v.to(storage) if v.ndim >= 2 and v.is_floating_point() and k not in keep else v for k, v in weights.items()
    }


def has_fp8_layers(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether a file stores layer matrices in fp8 (t5xxl_fp8_e4m3fn, an fp8 checkpoint)."""
    return any(v.dtype in FP8_DTYPES for k, v in weights.items() if k.endswith(".weight") and v.ndim >= 2)


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


def cast_plain_weights(module: nn.Module, dtype: torch.dtype, keep: tuple[torch.dtype, ...] = ()) -> None:
    """Cast the floating-point parameters and buffers that are plain torch tensors to ``dtype``,
    leaving a custom layer's own tensor types (and integer storage) as they were loaded, and
    tensors already in one of the ``keep`` dtypes (fp8 storage cast per call) too.

    What the reference's loading into pre-allocated ``dtype`` layers amounts to for the tensors
    a custom layer does not take over itself."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if _plain(param) and param is not None and param.dtype != dtype and param.dtype not in keep:
                sub._parameters[name] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
        for name, buf in list(sub._buffers.items()):
            if _plain(buf) and buf is not None and buf.dtype != dtype and buf.dtype not in keep:
                sub._buffers[name] = buf.to(dtype)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def build_exactly(
    make: Callable[[], ModuleT],
    sd: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    fail: Callable[[str], Exception],
) -> ModuleT:
    """``make()`` built on the meta device and given exactly ``sd``'s tensors (assigned, not
    copied; a missing or extra tensor raises ``fail(reason)``), cast to ``dtype``, for inference:
    the control networks read their shape off the weights, so a mismatch is the file's fault."""
    with torch.device("meta"):
        module = make()
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    module.to(dtype)
    return module.eval().requires_grad_(False)


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


__all__ = [
    "FP8_DTYPES",
    "FP8_STORAGE",
    "CastOperations",
    "Operations",
    "TorchOperations",
    "cast_plain_weights",
    "casting_view",
    "custom_operations",
    "fp8_layer_weights",
    "has_fp8_layers",
    "is_default",
    "load_into",
    "streaming_class",
]
