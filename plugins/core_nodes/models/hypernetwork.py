"""Hypernetworks (the AUTOMATIC1111 ``.pt`` format) as attention patches.

A hypernetwork file is a dict: for each context width ``dim`` (an int key), a pair of small MLPs
(as state dicts of ``linear.N.weight`` / ``.bias``, layer norms in between when
``is_layer_norm``), one for the attention's keys and one for its values; string keys describe
them (``activation_func``, ``is_layer_norm``, ``use_dropout``, ``activate_output``,
``last_layer_dropout``). In every attention layer whose key width is a ``dim`` of the file the
patch makes ``k + strength * mlp_k(k)`` and ``v + strength * mlp_v(v)`` (the reference's rule:
the MLPs see the attention's context before its projections; queries are left alone).

Dropout layers are kept as the reference builds them; they are inactive (evaluation mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}
_DROPOUT = 0.3


class HypernetworkError(ValueError):
    """A file that is not a hypernetwork this server reads; the message says why."""


def _mlp(weights: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> nn.Sequential:
    """One MLP: its linears in file order, each followed by the activation, a layer norm (the next
    weight in the file) when ``is_layer_norm``, and dropout as the trainer placed it. "The last
    layer" (no activation unless ``activate_output``, no dropout) is, as in the reference, the
    last *weight* of the file: with layer norms that is a norm, so every linear is activated."""
    activation = options["activation_func"]
    names = [k[: -len(".weight")] for k in weights if k.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        weight, bias = weights[names[i] + ".weight"], weights.get(names[i] + ".bias")
        if weight.ndim != 2 or bias is None:
            raise HypernetworkError(f"{names[i]} is not a linear layer")
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
        if activation != "linear" and (not last or options["activate_output"]):
            layers.append(ACTIVATIONS[activation]())
        if options["is_layer_norm"]:
            i += 1
            if i >= len(names):
                raise HypernetworkError(f"{names[i - 1]} has no layer norm after it")
            norm_w, norm_b = weights[names[i] + ".weight"], weights.get(names[i] + ".bias")
            norm = nn.LayerNorm(norm_w.shape[0])
            norm.load_state_dict({"weight": norm_w, "bias": norm_b})
            layers.append(norm)
        if options["use_dropout"] and not last and (not penultimate or options["last_layer_dropout"]):
            layers.append(nn.Dropout(p=_DROPOUT))
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


class HypernetworkPatch:
    """The ``attn1_patch`` / ``attn2_patch`` callable: ``(q, k, v, extra_options) -> (q, k, v)``."""

    def __init__(self, networks: dict[int, nn.ModuleList], strength: float) -> None:
        self.hypernet = networks
        self.strength = strength

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: Any) -> tuple[Any, ...]:
        pair = self.hypernet.get(int(k.shape[-1]))
        if pair is None:
            return q, k, v
        key_net, value_net = self._on(pair, k)
        k = k + key_net(k) * self.strength
        v = v + value_net(v) * self.strength
        return q, k, v

    @staticmethod
    def _on(pair: nn.ModuleList, x: torch.Tensor) -> nn.ModuleList:
        first = next(pair.parameters())
        if first.device != x.device or first.dtype != x.dtype:
            pair.to(device=x.device, dtype=x.dtype)
        return pair

    def to(self, device: Any) -> HypernetworkPatch:
        for dim, pair in self.hypernet.items():
            self.hypernet[dim] = pair.to(device)
        return self


def _options(sd: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "activation_func": sd.get("activation_func", "linear"),
        "is_layer_norm": bool(sd.get("is_layer_norm", False)),
        "use_dropout": bool(sd.get("use_dropout", False)),
        "activate_output": bool(sd.get("activate_output", False)),
        "last_layer_dropout": bool(sd.get("last_layer_dropout", False)),
    }


def build_patch(sd: Mapping[Any, Any], strength: float) -> HypernetworkPatch:
    """The patch for a hypernetwork's contents (see the module docstring)."""
    options = _options(sd)
    if options["activation_func"] not in ACTIVATIONS:
        raise HypernetworkError(
            f"activation {options['activation_func']!r} is not supported "
            f"(known: {', '.join(sorted(ACTIVATIONS))})"
        )
    networks: dict[int, nn.ModuleList] = {}
    for key, value in sd.items():
        try:
            dim = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise HypernetworkError(f"entry {key!r} is not a pair of key / value networks")
        pair = []
        for part in value[:2]:
            if not isinstance(part, Mapping):
                raise HypernetworkError(f"entry {key!r} does not hold layer weights")
            pair.append(_mlp(part, options))
        networks[dim] = nn.ModuleList(pair)
    if not networks:
        raise HypernetworkError("no networks found (no entries keyed by a context width)")
    return HypernetworkPatch(networks, strength)


def load_hypernetwork(path: Any, strength: float) -> HypernetworkPatch:
    """A hypernetwork file (a pickle, read with ``weights_only``: tensors and plain containers)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or unsafe pickle can fail in any way at all
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise HypernetworkError(f"could not read the hypernetwork file ({detail})") from None
    if not isinstance(sd, Mapping):
        raise HypernetworkError("the file does not hold a hypernetwork dictionary")
    return build_patch(sd, strength)


__all__ = ["ACTIVATIONS", "HypernetworkError", "HypernetworkPatch", "build_patch", "load_hypernetwork"]
