"""LoRA files: reading kohya / diffusers / PEFT / LyCORIS keys, and weights patched without mutation.

A LoRA file holds (mostly low-rank) changes to some weights of the UNet and the text encoders.
Reading one gives, per target (``unet``, or a text encoder name ``l`` / ``h`` / ``g``), a mapping
from our parameter names to :class:`Delta` objects. Applying never touches the loaded model: a
:class:`PatchedWeights` keeps the base module and a list of ``(strength, delta)`` per parameter,
merges them lazily into fresh tensors (on the device the base weights sit on) and runs the module
with those tensors swapped in for the duration of one call (``torch.func.functional_call``).
Removing a LoRA is dropping the patched object; the base model's outputs stay bit-exact.

Key formats understood:

* kohya: ``lora_unet_<module path with underscores>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``; the module path in the diffusers layout (``down_blocks_0_attentions_0_...``) or the
  original one (``input_blocks_1_1_...``); text encoders ``lora_te_`` (SD1/SD2), ``lora_te1_`` /
  ``lora_te2_`` (SDXL's CLIP-L / OpenCLIP-G), with transformers module paths.
* diffusers / PEFT: ``unet.<diffusers path>.lora_A.weight`` / ``lora_B.weight`` (or
  ``.lora.down.weight`` / ``.lora.up.weight``, or the older ``processor.to_q_lora.down.weight``),
  ``text_encoder.`` / ``text_encoder_2.`` likewise; an optional ``.alpha`` per module.
* LyCORIS, on the kohya module names:

  - LoCon: the kohya names on convolutions, optionally with a Tucker core ``.lora_mid.weight``;
  - LoHa: ``hada_w1_a`` ... ``hada_w2_b``, optionally with Tucker cores ``hada_t1`` / ``hada_t2``;
  - LoKr: ``lokr_w1`` (or ``lokr_w1_a`` / ``lokr_w1_b``) and ``lokr_w2`` (or ``lokr_w2_a`` /
    ``lokr_w2_b``, optionally with a Tucker core ``lokr_t2``), the change being their Kronecker
    product;
  - full differences: ``.diff`` for the weight and ``.diff_b`` for the bias, added as written;
  - DoRA: a ``.dora_scale`` beside any of the above rescales the merged weight per output (or
    input) channel to the trained magnitudes.

What cannot apply is listed by :func:`resolve` (with why) and the rest applies, as the reference
does: keys naming no layer of the model, modules whose tensors are incomplete (a LoHa without
``hada_w2_b``), and changes whose size does not fit their weight (an SD1 text-encoder LoRA on SD2's
wider encoder); a full difference must have its weight's shape, low-rank changes only its size.

The scale of a low-rank change is ``alpha / rank`` (1 without an alpha), as every trainer writes
it; the rank is the inner size of the ``down`` / ``w1_b`` factor (for LoKr, of the decomposed
side's ``_b``, the right one's when both are; scale 1 when neither is).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .unet import UNetConfig

Patches = dict[str, tuple[tuple[float, "Delta"], ...]]

# Suffix of a key -> the role of that tensor in its module's change.
_PARTS: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".hada_w1_a", "w1a"),
    (".hada_w1_b", "w1b"),
    (".hada_w2_a", "w2a"),
    (".hada_w2_b", "w2b"),
    (".hada_t1", "t1"),
    (".hada_t2", "t2"),
    (".lokr_w1", "k1"),
    (".lokr_w1_a", "k1a"),
    (".lokr_w1_b", "k1b"),
    (".lokr_w2", "k2"),
    (".lokr_w2_a", "k2a"),
    (".lokr_w2_b", "k2b"),
    (".lokr_t2", "k2t"),
    (".diff", "diff"),
    (".diff_b", "diff_b"),
    (".dora_scale", "dora"),
    (".alpha", "alpha"),
)
# The older diffusers attention-processor names: ``attn1.processor.to_q_lora`` means ``attn1.to_q``.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


class LoraError(ValueError):
    """A LoRA file that cannot be applied; the message names the file."""


@dataclass(frozen=True)
class Delta:
    """One parameter's change, kept factored until it is merged; ``kind`` says how ``tensors`` make it.

    * ``lora``: ``(up, down)``, the product ``up @ down`` (a LoCon kernel lives in ``down``).
    * ``lora_tucker``: ``(up, mid, down)``, LoCon with a Tucker core: ``up`` and ``down`` are 1x1,
      ``mid`` is ``rank x rank x k x k``.
    * ``loha``: ``(w1a, w1b, w2a, w2b)``, the Hadamard product ``(w1a @ w1b) * (w2a @ w2b)``;
      ``loha_tucker``: ``(t1, w1a, w1b, t2, w2a, w2b)``, each side a Tucker product (see :func:`_tucker`).
    * ``lokr``: the first ``split`` tensors make the left Kronecker factor, the rest the right one;
      each factor is one tensor, a product ``a @ b`` or a Tucker product ``(core, a, b)``.
    * ``diff``: ``(change,)``, a full difference as written.

    ``param`` is the parameter of the module it changes; with a ``dora_scale`` the change is DoRA's
    (see :meth:`apply`).
    """

    kind: str
    tensors: tuple[torch.Tensor, ...]
    scale: float
    param: str = "weight"
    split: int = 0
    dora_scale: torch.Tensor | None = None

    def shape(self) -> torch.Size:
        """The shape the change is computed in, from the factors' shapes alone (nothing is multiplied).

        A low-rank change is reshaped to its weight's shape when merged, so only its element count
        (:meth:`numel`) has to agree with the weight; a ``diff`` is added as written. Raises
        ``ValueError`` when the factors do not fit each other.
        """
        shapes = tuple(t.shape for t in self.tensors)
        if self.kind == "lora":
            return _product_shape(*shapes)
        if self.kind == "lora_tucker":
            up, mid, down = shapes
            inner = _product_shape(up, mid[:2])
            return torch.Size([inner[0], _product_shape(mid[:2], down)[1], *mid[2:]])
        if self.kind == "loha":
            return _broadcast(_factor_shape(shapes[:2]), _factor_shape(shapes[2:]))
        if self.kind == "loha_tucker":
            return _broadcast(_factor_shape(shapes[:3]), _factor_shape(shapes[3:]))
        if self.kind == "lokr":
            return _kron_shape(_factor_shape(shapes[: self.split]), _factor_shape(shapes[self.split :]))
        if self.kind == "diff":
            return shapes[0]
        raise ValueError(f"unknown kind of change {self.kind!r}")

    def numel(self) -> int:
        """How many elements the change has (see :meth:`shape`)."""
        return self.shape().numel()

    def weight(self, shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
        """The change to add to a weight of ``shape``, in float32, computed on ``device`` (by
        default the tensors' own)."""
        delta = self._change(device)
        if delta.numel() != torch.Size(shape).numel():
            raise ValueError(
                f"a change of shape {tuple(delta.shape)} does not fit a weight of {tuple(shape)}"
            )
        return delta.reshape(shape) * self.scale

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """``weight`` (float32) with this change added at ``strength``, as a new tensor.

        The factors move to the weight's device first, so that the products run there (on a GPU,
        not on the CPU the file was read to). DoRA merges at full strength, rescales the merged
        weight to ``dora_scale`` (see :func:`_decompose`) and then moves ``strength`` of the way
        from ``weight`` to that, so strength 0 is the weight as it was and the result is linear in
        the strength.
        """
        change = self.weight(weight.shape, weight.device)
        if self.dora_scale is None:
            return weight + strength * change
        target = _decompose(weight + change, _to(self.dora_scale, weight.device))
        return weight + strength * (target - weight)

    def _change(self, device: torch.device | None = None) -> torch.Tensor:
        # Moved before the conversion: a half-precision factor crosses to the GPU at half the size.
        tensors = tuple(_to(t, device).float() for t in self.tensors)
        if self.kind == "lora":
            up, down = tensors
            # Linear, 1x1 and (LoCon) k x k convolutions alike: the kernel lives in ``down``.
            return up.flatten(1) @ down.flatten(1)
        if self.kind == "lora_tucker":
            up, mid, down = tensors
            # x -> down (1x1) -> mid (k x k) -> up (1x1): one k x k kernel.
            return torch.einsum("om,mn...,ni->oi...", up.flatten(1), mid, down.flatten(1))
        if self.kind == "loha":
            return _factor(tensors[:2]) * _factor(tensors[2:])
        if self.kind == "loha_tucker":
            return _factor(tensors[:3]) * _factor(tensors[3:])
        if self.kind == "lokr":
            return _kron(_factor(tensors[: self.split]), _factor(tensors[self.split :]))
        if self.kind == "diff":
            return tensors[0]
        raise ValueError(f"unknown kind of change {self.kind!r}")


def _to(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    if device is None or tensor.device == device:
        return tensor
    # Asynchronous only towards an accelerator: a copy back to the CPU could be read unfinished.
    return tensor.to(device, non_blocking=device.type != "cpu")


# --- the shapes of the products, from the factors' shapes -------------------------------------


def _product_shape(a: torch.Size, b: torch.Size) -> torch.Size:
    """The shape of ``a.flatten(1) @ b.flatten(1)``."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"factors of shapes {tuple(a)} and {tuple(b)} are not matrices")
    if math.prod(a[1:]) != b[0]:
        raise ValueError(f"factors of shapes {tuple(a)} and {tuple(b)} do not multiply")
    return torch.Size([a[0], math.prod(b[1:])])


def _factor_shape(parts: tuple[torch.Size, ...]) -> torch.Size:
    """The shape of :func:`_factor` of tensors of these shapes."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return _product_shape(*parts)
    core, a, b = parts
    if len(core) < 2 or len(a) < 2 or len(b) < 2 or core[0] != a[0] or core[1] != b[0]:
        raise ValueError(f"a Tucker core of shape {tuple(core)} does not fit factors {tuple(a)}, {tuple(b)}")
    return torch.Size([math.prod(a[1:]), math.prod(b[1:]), *core[2:]])


def _broadcast(left: torch.Size, right: torch.Size) -> torch.Size:
    try:
        return torch.broadcast_shapes(left, right)
    except RuntimeError:
        raise ValueError(f"Hadamard factors of shapes {tuple(left)} and {tuple(right)} differ") from None


def _kron_shape(left: torch.Size, right: torch.Size) -> torch.Size:
    """The shape of :func:`_kron`: the left factor takes trailing unit dimensions, the right one
    (as ``torch.kron`` does) leading ones."""
    left_dims = [*left, *[1] * (len(right) - len(left))]
    right_dims = [*[1] * (len(left) - len(right)), *right]
    return torch.Size([a * b for a, b in zip(left_dims, right_dims, strict=True)])


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LyCORIS' Tucker product: ``core`` is ``rank x rank x k x k``, ``a`` is ``rank x out`` and
    ``b`` is ``rank x in`` (both stored transposed from the plain ``a @ b`` layout)."""
    return torch.einsum("ij...,ip,jr->pr...", core, a.flatten(1), b.flatten(1))


def _factor(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One factor of a LoHa / LoKr change: a whole tensor, ``a @ b``, or ``(core, a, b)``."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0].flatten(1) @ parts[1].flatten(1)
    return _tucker(*parts)


def _kron(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    # A convolution's right factor carries the kernel; the left one is a plain matrix and takes
    # trailing unit dimensions, so the product is (out, in, k, k) in the weight's own layout.
    if right.dim() > left.dim():
        left = left.reshape(*left.shape, *[1] * (right.dim() - left.dim()))
    # torch.kron views its inputs, which fails on the strided result of a Tucker einsum.
    return torch.kron(left.contiguous(), right.contiguous())


def _decompose(merged: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA: ``merged`` rescaled so that each output row (or input column) has the norm ``magnitude``.

    The axis follows the magnitude's shape as trainers write it: ``(out, 1, ...)`` or ``(out,)`` per
    output channel, ``(1, in, ...)`` per input channel (LyCORIS' default). Both axes normalise
    the merged weight, as DoRA and LyCORIS define it (ComfyUI divides by the base weight's norms on
    the output axis, which keeps a different magnitude than the one trained).
    """
    axis = _dora_axis(merged.shape, magnitude.shape)
    if axis is None:
        raise ValueError(
            f"a DoRA scale of shape {tuple(magnitude.shape)} fits no axis of a weight of {tuple(merged.shape)}"
        )
    shape = [1] * merged.dim()
    shape[axis] = merged.shape[axis]
    norm = merged.transpose(0, axis).flatten(1).norm(dim=1).reshape(shape)
    magnitude = magnitude.float()
    # The trainers' epsilon, so that a zero row stays zero instead of becoming NaN.
    return merged * (magnitude.reshape(shape) / (norm + torch.finfo(torch.float32).eps))


def _dora_axis(weight: torch.Size, magnitude: torch.Size) -> int | None:
    """The axis a DoRA magnitude of this shape scales: 0 (per output), 1 (per input) or none."""
    if len(weight) < 2:
        return None
    if magnitude and magnitude[0] == weight[0] and magnitude.numel() == weight[0]:
        return 0
    if magnitude.numel() == weight[1]:
        return 1
    return None


def _split(key: str) -> tuple[str, str] | None:
    for suffix, part in _PARTS:
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            match = _PROCESSOR.search(module)
            if match:
                name = "to_out.0" if match.group(1) == "to_out" else match.group(1)
                module = module[: match.start()] + "." + name
            return module, part
    return None


def _scale(alpha: torch.Tensor | None, rank: int) -> float:
    return float(alpha) / rank if alpha is not None else 1.0


def _low_rank(parts: Mapping[str, torch.Tensor]) -> Delta | None:
    if "up" not in parts or "down" not in parts:
        return None
    scale = _scale(parts.get("alpha"), parts["down"].shape[0])
    if "mid" in parts:
        return Delta("lora_tucker", (parts["up"], parts["mid"], parts["down"]), scale)
    return Delta("lora", (parts["up"], parts["down"]), scale)


def _loha(parts: Mapping[str, torch.Tensor]) -> Delta | None:
    if not all(p in parts for p in ("w1a", "w1b", "w2a", "w2b")):
        return None
    scale = _scale(parts.get("alpha"), parts["w1b"].shape[0])
    if "t1" in parts and "t2" in parts:
        tensors = (parts["t1"], parts["w1a"], parts["w1b"], parts["t2"], parts["w2a"], parts["w2b"])
        return Delta("loha_tucker", tensors, scale)
    w1b = parts["w1b"].flatten(1)
    w2b = parts["w2b"].flatten(1)
    return Delta("loha", (parts["w1a"], w1b, parts["w2a"], w2b), scale)


def _lokr_factor(parts: Mapping[str, torch.Tensor], name: str) -> tuple[torch.Tensor, ...] | None:
    """One side of a LoKr change: ``k1`` / ``k2`` whole, or its ``a`` / ``b`` (and Tucker core)."""
    if name in parts:
        return (parts[name],)
    if name + "a" not in parts or name + "b" not in parts:
        return None
    core = parts.get(name + "t")
    pair = (parts[name + "a"], parts[name + "b"])
    return pair if core is None else (core, *pair)


def _lokr(parts: Mapping[str, torch.Tensor]) -> Delta | None:
    left, right = _lokr_factor(parts, "k1"), _lokr_factor(parts, "k2")
    if left is None or right is None:
        return None
    # The rank is the decomposed side's (the right one's when both are): alpha / rank scales the
    # whole product. With both sides whole there is no rank and the product is used as is.
    if len(right) > 1:
        scale = _scale(parts.get("alpha"), parts["k2b"].shape[0])
    elif len(left) > 1:
        scale = _scale(parts.get("alpha"), parts["k1b"].shape[0])
    else:
        scale = 1.0
    return Delta("lokr", (*left, *right), scale, split=len(left))


def _weight_delta(parts: Mapping[str, torch.Tensor]) -> Delta | None:
    for build in (_low_rank, _loha, _lokr):
        delta = build(parts)
        if delta is not None:
            break
    else:
        delta = Delta("diff", (parts["diff"],), 1.0) if "diff" in parts else None
    if delta is not None and "dora" in parts:
        delta = replace(delta, dora_scale=parts["dora"])
    return delta


class Deltas(dict[str, Delta]):
    """What :func:`read_deltas` found: the complete changes by key, and in ``incomplete`` the module
    keys whose tensors make no change (a LoHa without ``hada_w2_b``, an ``up`` without its
    ``down``), each with why, so that :func:`resolve` lists them with the keys that fit nothing."""

    def __init__(
        self, changes: Mapping[str, Delta] | None = None, incomplete: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(changes or {})
        self.incomplete: dict[str, str] = dict(incomplete or {})


_LOHA = (("w1a", "hada_w1_a"), ("w1b", "hada_w1_b"), ("w2a", "hada_w2_a"), ("w2b", "hada_w2_b"))


def _incomplete(parts: Mapping[str, torch.Tensor]) -> str | None:
    """Why a module's tensors make no weight change; None when they never meant to (a bias only)."""
    present = set(parts) - {"diff_b"}
    if not present:
        return None
    if present & {"up", "down", "mid"}:
        missing = " and ".join(p for p in ("up", "down") if p not in parts)
        return f"a LoRA without its {missing} weight"
    if present & {"w1a", "w1b", "w2a", "w2b", "t1", "t2"}:
        return "a LoHa without " + ", ".join(name for part, name in _LOHA if part not in parts)
    if any(p.startswith("k") for p in present):
        sides = [s for s in ("1", "2") if _lokr_factor(parts, "k" + s) is None]
        return "a LoKr without " + " and ".join(f"lokr_w{s} (or lokr_w{s}_a and _b)" for s in sides)
    names = {"alpha": "alpha", "dora": "dora_scale"}
    return "no change beside its " + " and ".join(sorted(names.get(p, p) for p in present))


def read_deltas(sd: Mapping[str, torch.Tensor]) -> Deltas:
    """The file's changes by module key as written (prefix included), each one complete; the
    modules whose tensors are not are in the answer's ``incomplete``.

    A change to a parameter other than the module's weight (``.diff_b``: its bias) is keyed
    ``<module key>.<param>``.
    """
    from .lora_flux import convert_xlabs_keys

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in convert_xlabs_keys(sd).items():
        split = _split(key)
        if split is not None:
            groups.setdefault(split[0], {})[split[1]] = value
    out = Deltas()
    for module, parts in groups.items():
        delta = _weight_delta(parts)
        if delta is not None:
            out[module] = delta
        else:
            why = _incomplete(parts)
            if why is not None:
                out.incomplete[module] = why
        if "diff_b" in parts:
            out[module + ".bias"] = Delta("diff", (parts["diff_b"],), 1.0, param="bias")
    return out


# --- our parameter names under each naming scheme -------------------------------------------


def _unet_block_names(config: UNetConfig) -> dict[str, str]:
    """Original block prefix -> diffusers block prefix, for every numbered UNet block."""
    names: dict[str, str] = {}
    levels = len(config.channel_mult)
    index = 1
    for level in range(levels):
        for j in range(config.num_res_blocks[level]):
            names[f"input_blocks.{index}.0."] = f"down_blocks.{level}.resnets.{j}."
            names[f"input_blocks.{index}.1."] = f"down_blocks.{level}.attentions.{j}."
            index += 1
        if level != levels - 1:
            names[f"input_blocks.{index}.0.op."] = f"down_blocks.{level}.downsamplers.0.conv."
            index += 1
    names["middle_block.0."] = "mid_block.resnets.0."
    names["middle_block.1."] = "mid_block.attentions.0."
    names["middle_block.2."] = "mid_block.resnets.1."
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        count = config.num_res_blocks[level] + 1
        for j in range(count):
            names[f"output_blocks.{index}.0."] = f"up_blocks.{up}.resnets.{j}."
            names[f"output_blocks.{index}.1."] = f"up_blocks.{up}.attentions.{j}."
            if level and j == count - 1:
                has_attention = config.transformer_depth_output[index] > 0
                slot = 2 if has_attention else 1
                names[f"output_blocks.{index}.{slot}.conv."] = f"up_blocks.{up}.upsamplers.0.conv."
            index += 1
    names.update(
        {
            "input_blocks.0.0.": "conv_in.",
            "time_embed.0.": "time_embedding.linear_1.",
            "time_embed.2.": "time_embedding.linear_2.",
            "label_emb.0.0.": "add_embedding.linear_1.",
            "label_emb.0.2.": "add_embedding.linear_2.",
            "out.0.": "conv_norm_out.",
            "out.2.": "conv_out.",
        }
    )
    return names


_RESNET_PARTS = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}


def unet_diffusers_names(config: UNetConfig, ours: Iterable[str]) -> dict[str, str]:
    """Our UNet module names -> the diffusers module names of the same layers."""
    blocks = sorted(_unet_block_names(config).items(), key=lambda kv: -len(kv[0]))
    out: dict[str, str] = {}
    for name in ours:
        dotted = name + "."
        for ours_prefix, theirs_prefix in blocks:
            if dotted.startswith(ours_prefix):
                rest = dotted[len(ours_prefix) :]
                if ".resnets." in theirs_prefix:
                    for a, b in _RESNET_PARTS.items():
                        if rest.startswith(a):
                            rest = b + rest[len(a) :]
                            break
                out[name] = (theirs_prefix + rest).rstrip(".")
                break
    return out


def _module_names(module: nn.Module) -> list[str]:
    """Names of the modules that own a ``weight`` parameter."""
    return [
        name for name, sub in module.named_modules() if isinstance(getattr(sub, "weight", None), nn.Parameter)
    ]


def transformer_lora_maps(unet: nn.Module | None) -> tuple[dict[str, str], dict[str, Any]] | None:
    """For a transformer with fused layers (Flux, SD3's MMDiT): (LoRA keys naming a whole module
    -> our module name, keys naming rows of a fused weight -> their :class:`.lora_fused.RowBlock`);
    None for a UNet."""
    from .lora_flux import flux_key_map, flux_slice_map, is_flux_network
    from .lora_sd3 import is_sd3_network, sd3_key_map, sd3_slice_map

    if unet is not None and is_flux_network(unet):
        return flux_key_map(unet), flux_slice_map(unet)
    if unet is not None and is_sd3_network(unet):
        return sd3_key_map(unet), sd3_slice_map(unet)
    return None


def unet_key_map(unet: nn.Module) -> dict[str, str]:
    """Every way a LoRA file may name one of our UNet modules -> our module name (a Flux or SD3
    transformer's are :func:`transformer_lora_maps`')."""
    maps = transformer_lora_maps(unet)
    if maps is not None:
        return maps[0]
    config: UNetConfig = unet.config  # type: ignore[assignment]
    ours = _module_names(unet)
    diffusers = unet_diffusers_names(config, ours)
    keys: dict[str, str] = {}
    for name in ours:
        keys["lora_unet_" + name.replace(".", "_")] = name
        keys["diffusion_model." + name] = name
        keys["model.diffusion_model." + name] = name
        theirs = diffusers.get(name)
        if theirs is not None:
            keys["lora_unet_" + theirs.replace(".", "_")] = name
            keys["unet." + theirs] = name
            keys[theirs] = name
    return keys


# kohya's text-encoder prefixes and diffusers' component names, per tokenizer/encoder name.
_TEXT_PREFIXES: dict[str, dict[str, tuple[str, ...]]] = {
    "single": {"kohya": ("lora_te_",), "diffusers": ("text_encoder.",)},
    "l": {"kohya": ("lora_te1_",), "diffusers": ("text_encoder.",)},
    "g": {"kohya": ("lora_te2_",), "diffusers": ("text_encoder_2.",)},
}


def text_key_map(encoders: Mapping[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """LoRA module keys -> (encoder name, our module name) for a family's text encoders."""
    keys: dict[str, tuple[str, str]] = {}
    dual = len(encoders) > 1
    for enc_name, model in encoders.items():
        if enc_name.startswith("t5"):
            keys.update(_t5_keys(enc_name, model, encoders))
            continue
        scheme = _TEXT_PREFIXES[enc_name] if dual else _TEXT_PREFIXES["single"]
        for name in _module_names(model):
            hf = "text_model." + name
            for prefix in scheme["kohya"]:
                keys[prefix + hf.replace(".", "_")] = (enc_name, name)
            for prefix in scheme["diffusers"]:
                keys[prefix + hf] = (enc_name, name)
                keys[prefix + name] = (enc_name, name)
            # The reference's own module paths (what its LoRA extraction writes); its
            # text_projection sits beside text_model.
            ref = name if name.startswith("text_projection") else hf
            keys[f"text_encoders.clip_{enc_name}.transformer.{ref}"] = (enc_name, name)
    return keys


def _t5_keys(enc_name: str, model: nn.Module, encoders: Mapping[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """A T5 encoder's LoRA keys: kohya's ``lora_te<N>_`` numbered after the CLIPs beside it
    (OneTrainer's Flux files, CLIP-L + T5, use both 2 and 3, as the reference reads them) and the
    reference's own ``text_encoders.t5xxl.transformer.`` paths (transformers' names, as ours)."""
    index = 1 + ("g" in encoders) + ("l" in encoders)
    numbers = (2, 3) if index == 2 and "l" in encoders else (index,)
    keys: dict[str, tuple[str, str]] = {}
    for name in _module_names(model):
        for n in numbers:
            keys[f"lora_te{n}_" + name.replace(".", "_")] = (enc_name, name)
        keys[f"text_encoders.{enc_name}.transformer.{name}"] = (enc_name, name)
    return keys


@dataclass
class LoraFile:
    """A LoRA file's changes, resolved onto our modules; ``unmatched`` lists the keys left out
    (in the file's order, then the incomplete ones) and ``reasons`` says why, by key."""

    unet: dict[str, Delta]
    text: dict[str, dict[str, Delta]]
    unmatched: list[str]
    reasons: dict[str, str] = field(default_factory=dict)

    def leave_out(self, key: str, why: str) -> None:
        """List ``key`` as not applied, because ``why``."""
        self.unmatched.append(key)
        self.reasons[key] = why


def misfit(delta: Delta, param: torch.Tensor) -> str | None:
    """Why ``delta`` cannot change ``param`` (checked from shapes alone), or None when it fits.

    A low-rank change is reshaped to the parameter, so its element count must agree; a ``diff`` is
    added as written, so its shape must; a DoRA scale must fit one of the parameter's axes.
    """
    try:
        shape = delta.shape()
    except ValueError as e:
        return str(e)
    if delta.kind == "diff" and shape != param.shape:
        return f"a difference of shape {tuple(shape)} for a {delta.param} of shape {tuple(param.shape)}"
    # From the shape, not numel(): a pack's quantized tensor (GGUF) reports the layer's shape
    # while holding fewer, packed elements.
    if shape.numel() != math.prod(param.shape):
        return f"a change of {shape.numel()} elements for a {delta.param} of shape {tuple(param.shape)}"
    if delta.dora_scale is not None and _dora_axis(param.shape, delta.dora_scale.shape) is None:
        return f"a DoRA scale of shape {tuple(delta.dora_scale.shape)} for a {delta.param} of shape {tuple(param.shape)}"
    return None


def resolve(
    deltas: Mapping[str, Delta], unet: nn.Module | None, encoders: Mapping[str, nn.Module]
) -> LoraFile:
    """Place each change on our parameter names (``<module>.<param>``); the others are listed.

    Listed are: keys that name no module of ours, changes to a parameter the module lacks (a bias
    difference for a layer without a bias), changes whose size does not fit the parameter (an SD1
    text-encoder LoRA on SD2's wider encoder: see :func:`misfit`) and, when ``deltas`` comes from
    :func:`read_deltas`, its incomplete modules. The reference too skips these and applies the rest.
    """
    from .lora_fused import fuse_row_blocks

    maps = transformer_lora_maps(unet)
    if maps is not None:
        # diffusers' separate q / k / v (and Flux's proj_mlp) changes made one change of the fused weight.
        assert unet is not None
        deltas = fuse_row_blocks(deltas, unet, maps[1], maps[0])
    unet_keys = (maps[0] if maps is not None else unet_key_map(unet)) if unet is not None else {}
    text_keys = text_key_map(encoders) if encoders else {}
    unet_params = dict(unet.named_parameters()) if unet is not None else {}
    text_params = {enc: dict(m.named_parameters()) for enc, m in encoders.items()}
    out = LoraFile(unet={}, text={name: {} for name in encoders}, unmatched=[])
    for key, delta in deltas.items():
        module_key = key if delta.param == "weight" else key.removesuffix("." + delta.param)
        in_unet = unet_keys.get(module_key)
        in_text = text_keys.get(module_key)
        if in_unet is not None and f"{in_unet}.{delta.param}" in unet_params:
            name, target, params = f"{in_unet}.{delta.param}", out.unet, unet_params
        elif in_text is not None and f"{in_text[1]}.{delta.param}" in text_params[in_text[0]]:
            name, target, params = (
                f"{in_text[1]}.{delta.param}",
                out.text[in_text[0]],
                text_params[in_text[0]],
            )
        else:
            out.leave_out(key, "fits no layer of this model")
            continue
        why = misfit(delta, params[name])
        if why is None:
            target[name] = delta
        else:
            out.leave_out(key, why)
    for key, why in (deltas.incomplete if isinstance(deltas, Deltas) else {}).items():
        out.leave_out(key, why)
    return out


def add_patches(base: Patches, deltas: Mapping[str, Delta], strength: float) -> Patches:
    """``base`` plus ``deltas`` at ``strength`` (a new mapping; ``base`` is left alone)."""
    out = dict(base)
    if strength == 0:
        return out
    for name, delta in deltas.items():
        out[name] = (*out.get(name, ()), (float(strength), delta))
    return out


def _merge_deltas(name: str, weight: torch.Tensor, changes: Any) -> torch.Tensor:
    for strength, delta in changes:
        weight = delta.apply(weight, strength)
    return weight


class PatchedWeights:
    """A base module seen through LoRA patches. The base module's tensors are never written.

    ``merged()`` holds the patched tensors (only those), rebuilt when the base moves to another
    device or dtype; ``call`` runs the module with them. With no patches, ``call`` is the
    module's own call, so outputs equal the base model's bit for bit.
    """

    def __init__(
        self,
        module: nn.Module,
        patches: Mapping[str, Any] | None = None,
        merge: Callable[[str, torch.Tensor, Any], torch.Tensor] | None = None,
    ) -> None:
        self.module = module
        self.patches: Patches = dict(patches or {})
        # How one parameter's changes fold into its float32 weight: by default the ``(strength,
        # Delta)`` pairs of a LoRA; a MODEL passes the reference's patch entries' merge.
        self._merge = merge or _merge_deltas
        self._merged: dict[str, torch.Tensor] | None = None
        self._key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        params = dict(module.named_parameters())
        unknown = [name for name in self.patches if name not in params]
        if unknown:
            raise KeyError(f"no such weights to patch: {unknown[:3]}")

    def merged(self) -> dict[str, torch.Tensor]:
        params = dict(self.module.named_parameters())
        if not self.patches:
            return {}
        first = params[next(iter(self.patches))]
        key = (first.device, first.dtype, id(first))
        with self._lock:
            if self._merged is None or self._key != key:
                merged: dict[str, torch.Tensor] = {}
                with torch.no_grad():
                    for name, changes in self.patches.items():
                        weight = params[name]
                        base = weight.float()
                        if self._merge is not _merge_deltas and base is weight:
                            # The reference's entries with an offset write their rows into the
                            # tensor they are given: never into the model's own parameter.
                            base = base.clone()
                        merged[name] = self._merge(name, base, changes).to(weight.dtype)
                self._merged, self._key = merged, key
            return self._merged

    def pending_bytes(self, device: torch.device) -> int:
        """Bytes the merged tensors will take once made for the base module on ``device``: 0
        when they are already there (or nothing is patched). What the model manager finds room
        for beside the module itself."""
        if not self.patches:
            return 0
        with self._lock:
            if self._merged is not None and self._key is not None and self._key[0] == device:
                return 0
        params = dict(self.module.named_parameters())
        return sum(params[name].numel() * params[name].element_size() for name in self.patches)

    def release(self) -> None:
        """Let go of the merged tensors (the manager moved or dropped the base module)."""
        with self._lock:
            self._merged, self._key = None, None

    def call(self, *args: Any, **kwargs: Any) -> Any:
        if not self.patches:
            return self.module(*args, **kwargs)
        return torch.func.functional_call(self.module, self.merged(), args, kwargs, strict=False)


__all__ = [
    "Delta",
    "Deltas",
    "LoraError",
    "LoraFile",
    "PatchedWeights",
    "Patches",
    "add_patches",
    "misfit",
    "read_deltas",
    "resolve",
    "text_key_map",
    "unet_diffusers_names",
    "unet_key_map",
]
