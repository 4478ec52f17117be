"""LoRA files: reading kohya / diffusers / PEFT / LyCORIS keys, and weights patched without mutation.

A LoRA file holds low-rank changes to some weights of the UNet and the text encoders. Reading one
gives, per target (``unet``, or a text encoder name ``l`` / ``h`` / ``g``), a mapping from our
parameter names to :class:`Delta` objects. Applying never touches the loaded model: a
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
* LyCORIS: LoCon (the kohya names on convolutions) and LoHa (``hada_w1_a`` ... ``hada_w2_b``).

The scale of a low-rank pair is ``alpha / rank`` (1 without an alpha), as every trainer writes it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    (".hada_w1_a", "w1a"),
    (".hada_w1_b", "w1b"),
    (".hada_w2_a", "w2a"),
    (".hada_w2_b", "w2b"),
    (".lora_mid.weight", "mid"),
    (".alpha", "alpha"),
)
# The older diffusers attention-processor names: ``attn1.processor.to_q_lora`` means ``attn1.to_q``.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


class LoraError(ValueError):
    """A LoRA file that cannot be applied; the message names the file."""


@dataclass(frozen=True)
class Delta:
    """One module's change: ``up @ down * scale`` (low rank) or the LoHa Hadamard product."""

    kind: str
    tensors: tuple[torch.Tensor, ...]
    scale: float

    def weight(self, shape: torch.Size) -> torch.Tensor:
        """The change to add to a weight of ``shape``, in float32 on the tensors' device."""
        if self.kind == "lora":
            up, down = (t.float() for t in self.tensors)
            # Linear, 1x1 and (LoCon) k x k convolutions alike: the kernel lives in ``down``.
            delta = up.flatten(1) @ down.flatten(1)
        else:
            w1a, w1b, w2a, w2b = (t.float() for t in self.tensors)
            delta = (w1a @ w1b) * (w2a @ w2b)
        if delta.numel() != torch.Size(shape).numel():
            raise ValueError(
                f"a change of shape {tuple(delta.shape)} does not fit a weight of {tuple(shape)}"
            )
        return delta.reshape(shape) * self.scale


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


def read_deltas(sd: Mapping[str, torch.Tensor]) -> dict[str, Delta]:
    """The file's changes by module key as written (prefix included), each one complete."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        split = _split(key)
        if split is not None:
            groups.setdefault(split[0], {})[split[1]] = value
    out: dict[str, Delta] = {}
    for module, parts in groups.items():
        alpha = parts.get("alpha")
        if "up" in parts and "down" in parts and "mid" not in parts:
            rank = parts["down"].shape[0]
            scale = float(alpha) / rank if alpha is not None else 1.0
            out[module] = Delta("lora", (parts["up"], parts["down"]), scale)
        elif all(p in parts for p in ("w1a", "w1b", "w2a", "w2b")):
            rank = parts["w1b"].shape[0]
            scale = float(alpha) / rank if alpha is not None else 1.0
            w1b = parts["w1b"].flatten(1)
            w2b = parts["w2b"].flatten(1)
            out[module] = Delta("loha", (parts["w1a"], w1b, parts["w2a"], w2b), scale)
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


def unet_key_map(unet: nn.Module) -> dict[str, str]:
    """Every way a LoRA file may name one of our UNet modules -> our module name."""
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
        scheme = _TEXT_PREFIXES[enc_name] if dual else _TEXT_PREFIXES["single"]
        for name in _module_names(model):
            hf = "text_model." + name
            for prefix in scheme["kohya"]:
                keys[prefix + hf.replace(".", "_")] = (enc_name, name)
            for prefix in scheme["diffusers"]:
                keys[prefix + hf] = (enc_name, name)
                keys[prefix + name] = (enc_name, name)
    return keys


@dataclass
class LoraFile:
    """A LoRA file's changes, resolved onto our modules."""

    unet: dict[str, Delta]
    text: dict[str, dict[str, Delta]]
    unmatched: list[str]


def resolve(
    deltas: Mapping[str, Delta], unet: nn.Module | None, encoders: Mapping[str, nn.Module]
) -> LoraFile:
    """Place each change on our module names (``<module>.weight``); unknown keys are listed."""
    unet_keys = unet_key_map(unet) if unet is not None else {}
    text_keys = text_key_map(encoders) if encoders else {}
    out = LoraFile(unet={}, text={name: {} for name in encoders}, unmatched=[])
    for key, delta in deltas.items():
        if key in unet_keys:
            out.unet[unet_keys[key] + ".weight"] = delta
        elif key in text_keys:
            enc_name, module = text_keys[key]
            out.text[enc_name][module + ".weight"] = delta
        else:
            out.unmatched.append(key)
    return out


def add_patches(base: Patches, deltas: Mapping[str, Delta], strength: float) -> Patches:
    """``base`` plus ``deltas`` at ``strength`` (a new mapping; ``base`` is left alone)."""
    out = dict(base)
    if strength == 0:
        return out
    for name, delta in deltas.items():
        out[name] = (*out.get(name, ()), (float(strength), delta))
    return out


class PatchedWeights:
    """A base module seen through LoRA patches. The base module's tensors are never written.

    ``merged()`` holds the patched tensors (only those), rebuilt when the base moves to another
    device or dtype; ``call`` runs the module with them. With no patches, ``call`` is the
    module's own call, so outputs equal the base model's bit for bit.
    """

    def __init__(self, module: nn.Module, patches: Patches | None = None) -> None:
        self.module = module
        self.patches: Patches = dict(patches or {})
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
                        total = weight.float()
                        for strength, delta in changes:
                            total = total + strength * delta.weight(weight.shape).to(weight.device)
                        merged[name] = total.to(weight.dtype)
                self._merged, self._key = merged, key
            return self._merged

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
    "LoraError",
    "LoraFile",
    "PatchedWeights",
    "Patches",
    "add_patches",
    "read_deltas",
    "resolve",
    "text_key_map",
    "unet_diffusers_names",
    "unet_key_map",
]
