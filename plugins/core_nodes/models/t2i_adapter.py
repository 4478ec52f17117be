"""T2I-Adapters (SD1.x "full" adapters): a small convolutional encoder of the hint image whose
per-level features are added to the UNet's input-block outputs (``control["input"]``).

The original layout (``conv_in``, ``body.N.block1`` / ``block2`` / ``in_conv`` / ``down_opt``) is
the module's own; diffusers' ``T2IAdapter`` layout (``adapter.body.L.resnets.R.*``,
``adapter.body.L.in_conv``) is renamed to it. Unlike a ControlNet the features do not depend on
the timestep: :class:`T2IAdapter` computes them once per hint size and reuses them every step.
Light, style and SDXL adapters are refused with a clear error.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models.control import (
    ControlBase,
    ControlNetLoadError,
    _compute_device,
    broadcast_image_to,
    upscale_hint,
)
from plugins.core_nodes.models.operations import build_exactly

# Residual blocks per level in every released full adapter (and in diffusers' conversion).
BLOCKS_PER_LEVEL = 2


class _Downsample(nn.Module):
    """Halve the size: a strided 3x3 convolution, or 2x2 average pooling padded for odd sizes."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op is not None:
            return self.op(x)
        return F.avg_pool2d(x, 2, 2, ceil_mode=True)


class _ResBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int, use_conv: bool) -> None:
        super().__init__()
        pad = ksize // 2
        self.down_opt = _Downsample(in_c, use_conv) if down else None
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, pad) if in_c != out_c else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down_opt is not None:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


class Adapter(nn.Module):
    """``forward(hint)`` -> ``{"input": [...]}``: per level ``None, None, features`` (the level's
    two res-block input blocks and its last block), reversed so the UNet takes them from the end."""

    def __init__(self, cin: int, channels: list[int], ksize: int = 1, use_conv: bool = False, unshuffle: int = 8) -> None:
        super().__init__()
        self.unshuffle_amount = unshuffle
        self.input_channels = cin // (unshuffle * unshuffle)
        self.channels = list(channels)
        self.xl = False
        self.unshuffle = nn.PixelUnshuffle(unshuffle)
        self.conv_in = nn.Conv2d(cin, channels[0], 3, 1, 1)
        blocks: list[nn.Module] = []
        for level, ch in enumerate(channels):
            for j in range(BLOCKS_PER_LEVEL):
                first = level > 0 and j == 0
                blocks.append(_ResBlock(channels[level - 1] if first else ch, ch, first, ksize, use_conv))
        self.body = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
        x = self.conv_in(self.unshuffle(x))
        features: list[torch.Tensor | None] = []
        for level in range(len(self.channels)):
            for j in range(BLOCKS_PER_LEVEL):
                x = self.body[level * BLOCKS_PER_LEVEL + j](x)
            features += [None, None, x]
        return {"input": features[::-1]}


def is_t2i_adapter(sd: Mapping[str, Any]) -> bool:
    return any(k in sd for k in ("conv_in.weight", "adapter.conv_in.weight", "body.0.in_conv.weight", "style_embedding"))


def from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``T2IAdapter`` (full adapter) weights renamed to the original layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[:2] == ["adapter", "body"] and len(parts) > 4 and parts[3] == "resnets":
            index = int(parts[2]) * BLOCKS_PER_LEVEL + int(parts[4])
            out[".".join(["body", str(index), *parts[5:]])] = value
        elif parts[:2] == ["adapter", "body"]:
            out[".".join(["body", str(int(parts[2]) * BLOCKS_PER_LEVEL), *parts[3:]])] = value
        elif parts[0] == "adapter":
            out[".".join(parts[1:])] = value
        else:
            out[key] = value
    return out


def build_adapter(sd: Mapping[str, torch.Tensor], name: str = "the T2I-Adapter weights") -> Adapter:
    """A full T2I-Adapter with exactly these weights (original or diffusers layout)."""
    weights = from_diffusers(sd) if "adapter.conv_in.weight" in sd else dict(sd)
    if "style_embedding" in weights or "body.0.in_conv.weight" in weights:
        raise ControlNetLoadError(f"{name}: style and light T2I-Adapters are not supported")
    conv_in = weights.get("conv_in.weight")
    if conv_in is None or "body.0.block2.weight" not in weights:
        raise ControlNetLoadError(f"{name} holds no T2I-Adapter weights")
    cin, channel = conv_in.shape[1], conv_in.shape[0]
    if cin in (256, 768):
        raise ControlNetLoadError(f"{name}: SDXL T2I-Adapters are not supported")
    levels = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("body.")) // BLOCKS_PER_LEVEL
    channels = [channel]
    for level in range(1, levels):
        conv = weights.get(f"body.{level * BLOCKS_PER_LEVEL}.in_conv.weight")
        channels.append(conv.shape[0] if conv is not None else channels[-1])
    ksize = weights["body.0.block2.weight"].shape[2]
    use_conv = any(k.endswith("down_opt.op.weight") for k in weights)
    unshuffle = math.isqrt(cin // 3) if cin % 3 == 0 else 8
    return build_exactly(
        lambda: Adapter(cin, channels, ksize=ksize, use_conv=use_conv, unshuffle=unshuffle),
        weights,
        torch.float32,
        lambda why: ControlNetLoadError(f"{name}: the weights do not fit a T2I-Adapter: {why}"),
    )


class T2IAdapter(ControlBase):
    """A T2I-Adapter control (the reference's ``comfy.controlnet.T2IAdapter``): features computed
    once per hint size, scaled by the strength, added to the UNet's input blocks."""

    def __init__(self, t2i_model: Any, channels_in: int, compression_ratio: int, upscale_algorithm: str, device: Any = None) -> None:
        super().__init__()
        self.t2i_model = t2i_model
        self.channels_in = channels_in
        self.control_input: Any = None
        self.compression_ratio = compression_ratio
        self.upscale_algorithm = upscale_algorithm
        self.device = torch.device("cpu") if device is None else device

    def scale_image_to(self, width: int, height: int) -> tuple[int, int]:
        step = self.t2i_model.unshuffle_amount
        return math.ceil(width / step) * step, math.ceil(height / step) * step

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any], batched_number: int, transformer_options: Any = None) -> Any:
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if not self.active(t):
            return control_prev
        ratio = self.compression_ratio
        if self.cond_hint is None or tuple(self.cond_hint.shape[2:]) != self.scale_image_to(x_noisy.shape[3] * ratio, x_noisy.shape[2] * ratio)[::-1]:
            self.control_input = None
            width, height = self.scale_image_to(x_noisy.shape[3] * ratio, x_noisy.shape[2] * ratio)
            hint = upscale_hint(self.cond_hint_original, width, height, self.upscale_algorithm).float().to(self.device)
            if self.channels_in == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            self.cond_hint = hint
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        if self.control_input is None:
            with _compute_device(self.t2i_model) as device, torch.no_grad():
                self.control_input = self.t2i_model(self.cond_hint.to(device, torch.float32))
        # Fresh tensors each call: merging scales them in place and the UNet pops the lists.
        fresh = {k: [None if a is None else a.clone().to(x_noisy.device) for a in v] for k, v in self.control_input.items()}
        return self.control_merge(fresh, control_prev, x_noisy.dtype)

    def cleanup(self) -> None:
        self.control_input = None
        super().cleanup()

    def copy(self) -> T2IAdapter:
        c = T2IAdapter(self.t2i_model, self.channels_in, self.compression_ratio, self.upscale_algorithm, self.device)
        self.copy_to(c)
        return c

    def deepclone_multigpu(self, load_device: Any, autoregister: bool = False) -> T2IAdapter:
        c = self.copy()
        c.t2i_model = copy.deepcopy(c.t2i_model)
        c.device = load_device
        if autoregister:
            self.multigpu_clones[load_device] = c
        return c


def wrap_adapter(model: Adapter) -> T2IAdapter:
    return T2IAdapter(model, model.input_channels, model.unshuffle_amount, "nearest-exact")
