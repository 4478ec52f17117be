"""LoRA in bypass mode (``LoraLoaderBypass``): the change runs beside the layer instead of in its weight.

A bypassed layer computes ``base(x) + strength * path(x)`` where ``path`` is the LoRA's own
computation: for a low-rank pair ``up(down(x)) * scale`` (two thin matmuls or convolutions, the
full-size change is never built), for the other kinds the layer's operation with the change as
its weight and no bias. Being linear in the weight, it gives the merged LoRA's output (up to
rounding) while the layer's weight stays what it was, which is how the reference's debugging node
checks a LoRA and how trainers run one.

The bypass goes in through the MODEL's object patches: each LoRA'd UNet layer is replaced, for
this MODEL only, by a :class:`BypassLayer` holding the same parameters under the same names, so
weight patches (another LoRA, a merge) still reach it. What cannot run beside its layer is merged
as usual (``add_patches``): bias and full differences, DoRA (not linear in the weight), and layers
of a pack's own classes. A CLIP's changes are always merged: its encoders have no object patches;
the output is the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models.lora import Delta, LoraError, read_deltas, resolve

UNET_PREFIX = "diffusion_model."
_BYPASSED_KINDS = ("lora", "lora_tucker", "loha", "loha_tucker", "lokr")


class BypassLayer(nn.Module):
    """A ``Linear`` / ``Conv2d`` with LoRA paths beside it (see the module docstring)."""

    def __init__(self, base: nn.Module, adapters: Sequence[tuple[Delta, float]]) -> None:
        super().__init__()
        # The layer's parameters under their own names (not a child's): a per-call weight swap
        # by name (functional_call) reaches them here.
        self.weight = base.weight
        self.register_parameter("bias", base.bias if isinstance(base.bias, nn.Parameter) else None)
        self.__dict__["base"] = base  # its settings (stride, padding ...), outside the module tree
        self.adapters = tuple(adapters)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.__dict__["base"]
        if isinstance(base, nn.Conv2d):
            return base._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    def _path(self, x: torch.Tensor, delta: Delta) -> torch.Tensor:
        cast = [t.to(device=x.device, dtype=x.dtype) for t in delta.tensors]
        base = self.__dict__["base"]
        if delta.kind == "lora":
            up, down = cast
            if isinstance(base, nn.Conv2d):
                if down.ndim == 2:
                    down = down.reshape(*down.shape, 1, 1)
                if down.shape[2:] == self.weight.shape[2:] and up.numel() == up.shape[0] * up.shape[1]:
                    hidden = F.conv2d(x, down, None, base.stride, base.padding, base.dilation, base.groups)
                    return F.conv2d(hidden, up.reshape(up.shape[0], up.shape[1], 1, 1)) * delta.scale
            elif down.ndim == 2 and up.ndim == 2:
                return F.linear(F.linear(x, down), up) * delta.scale
        change = delta.weight(self.weight.shape, x.device).to(x.dtype)
        return self._op(x, change, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._op(x, self.weight, self.bias)
        for delta, strength in self.adapters:
            out = out + strength * self._path(x, delta)
        return out


def _bypassable(module: Any, delta: Delta) -> bool:
    return (
        type(module) in (nn.Linear, nn.Conv2d)
        and delta.param == "weight"
        and delta.kind in _BYPASSED_KINDS
        and delta.dora_scale is None
    )


def bypass_unet(model: Any, changes: Mapping[str, Delta], strength: float) -> Any:
    """A clone of ``model`` with ``changes`` (our parameter names) in bypass where they can be."""
    twin = model.clone()
    merged: dict[str, Delta] = {}
    layers: dict[str, list[tuple[Delta, float]]] = {}
    for name, delta in changes.items():
        path = name.rsplit(".", 1)[0]
        module = twin.get_model_object(UNET_PREFIX + path)
        if isinstance(module, BypassLayer):
            layers.setdefault(path, list(module.adapters))
            module = module.__dict__["base"]
        if _bypassable(module, delta):
            layers.setdefault(path, []).append((delta, strength))
        else:
            merged[name] = delta
    for path, adapters in layers.items():
        current = twin.get_model_object(UNET_PREFIX + path)
        base = current.__dict__["base"] if isinstance(current, BypassLayer) else current
        twin.add_object_patch(UNET_PREFIX + path, BypassLayer(base, adapters))
    if merged:
        twin.add_patches({UNET_PREFIX + k: v for k, v in merged.items()}, strength)
    return twin


def bypass_lora(
    model: Any, clip: Any, sd: Mapping[str, torch.Tensor], strength_model: float, strength_clip: float,
    name: str = "(state dict)",
) -> tuple[Any, Any]:  # fmt: skip
    """LoraLoaderBypass: the UNet's changes in bypass, the CLIP's merged (see the module docstring)."""
    from plugins.core_nodes.models.adapters import DiffusionModel, TextEncoder, apply_lora_state_dict

    deltas = read_deltas(sd)
    if not deltas:
        raise LoraError(f"{name} holds no LoRA weights this server knows")
    unet = model.unet if isinstance(model, DiffusionModel) else None
    encoders = clip.models if isinstance(clip, TextEncoder) else {}
    found = resolve(deltas, unet, encoders)
    if not found.unet and not any(found.text.values()):
        raise LoraError(f"{name} does not fit this model: none of its {len(deltas)} LoRA keys match")
    new_model = model
    if model is not None and found.unet and strength_model != 0:
        if unet is None:
            raise LoraError(f"bypass LoRA needs this server's MODEL, not a {type(model).__name__}")
        new_model = bypass_unet(model, found.unet, strength_model)
    new_clip = clip
    if clip is not None and any(found.text.values()) and strength_clip != 0:
        _, new_clip = apply_lora_state_dict(None, clip, sd, 0.0, strength_clip, name=name)
    return new_model, new_clip


__all__ = ["BypassLayer", "bypass_lora", "bypass_unet"]
