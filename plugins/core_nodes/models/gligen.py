"""GLIGEN (grounded generation): text boxes steer where things appear in an SD1 image.

A GLIGEN file holds a *position net* and one *gated self-attention* block per transformer of the
UNet. The position net turns each box (x1, y1, x2, y2 as fractions of the latent) and its phrase's
pooled text embedding into a grounding token; unused slots of the fixed :data:`MAX_OBJECTS` take
learned null features. Inside every transformer, right after self-attention (the reference's
``middle_patch``), the block attends over the visual tokens followed by the grounding tokens and
adds the visual part back, scaled by ``tanh`` of learned gates.

Keys (the reference's pruned single-file layout): ``position_net.linears.{0,2,4}``,
``position_net.null_positive_feature`` / ``null_position_feature``, and per transformer
``<input_blocks|middle_block|output_blocks>.N...fuser.{linear,attn,ff,norm1,norm2,alpha_attn,
alpha_dense}``. The blocks are numbered in the UNet's transformer order (input blocks, middle,
output blocks), which is the ``transformer_index`` the UNet passes to its patches.

A CONDITIONING entry carries ``gligen = ("position", GLIGEN, [(pooled, h, w, y, x), ...])``
(sizes in latent pixels); the sampler asks ``GLIGEN.model.set_position(shape, boxes, device)``
for the ``middle_patch`` of that entry's model calls, as the reference's does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plugins.core_nodes.models.unet import Attention, FeedForward

# The reference pads (and limits) every call to this many grounding tokens.
MAX_OBJECTS = 30
# Sine and cosine of each box coordinate at this many frequencies.
FOURIER_FREQS = 8
# Grounding tokens as wide as CLIP-L's: the SD1 GLIGEN files; others get 64-wide heads.
_SD1_KEY_DIM = 768
_SD1_HEADS = 8
_HEAD_WIDTH = 64
_GROUPS = ("input_blocks", "middle_block", "output_blocks")
_FUSER_KEY = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\..*?\.fuser\.(.+)$")

Patch = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]
PositionParams = Sequence[tuple[torch.Tensor, int, int, int, int]]


class GLIGENError(ValueError):
    """A GLIGEN file or text-box input this server cannot use."""


def fourier_features(boxes: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """``[..., 4]`` box coordinates -> ``[..., freqs * 2 * 4]``: for each frequency (ascending
    powers of ``temperature``), the sines of the four coordinates, then their cosines."""
    bands = temperature ** (torch.arange(freqs, dtype=torch.float32) / freqs)
    angles = boxes.unsqueeze(-2) * bands.to(boxes).unsqueeze(-1)  # [..., freqs, 4]
    return torch.stack((angles.sin(), angles.cos()), dim=-2).flatten(-3)


class PositionNet(nn.Module):
    """(boxes, masks, phrase embeddings) -> grounding tokens ``[B, N, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, freqs: int = FOURIER_FREQS) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.freqs = freqs
        self.position_dim = freqs * 2 * 4
        self.linears = nn.Sequential(
            nn.Linear(in_dim + self.position_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_dim),
        )
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        used = masks.unsqueeze(-1)
        position = fourier_features(boxes, self.freqs)
        # Empty slots get the learned null features instead of zeros.
        null_text = self.null_positive_feature.to(embeddings).view(1, 1, -1)
        null_position = self.null_position_feature.to(position).view(1, 1, -1)
        embeddings = embeddings * used + (1 - used) * null_text
        position = position * used + (1 - used) * null_position
        return self.linears(torch.cat([embeddings, position], dim=-1))


class GatedSelfAttention(nn.Module):
    """Self-attention over visual + grounding tokens and a feed-forward, each added through a
    ``tanh`` gate (zero-initialised in training, so a fresh block changes nothing)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = Attention(query_dim, heads, head_dim)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        # The reference's external knob on both gates (1: as trained).
        self.scale = 1.0

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        visual = x.shape[1]
        tokens = torch.cat([x, self.linear(objs)], dim=1)
        x = x + self.scale * torch.tanh(self.alpha_attn) * self.attn(self.norm1(tokens))[:, :visual]
        return x + self.scale * torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def _heads(query_dim: int, key_dim: int) -> tuple[int, int]:
    """(heads, head width) as the reference picks them: 8 heads for SD1's 768-wide grounding
    tokens, 64-wide heads otherwise (never fewer than one head)."""
    if key_dim == _SD1_KEY_DIM:
        return _SD1_HEADS, query_dim // _SD1_HEADS
    if query_dim < _HEAD_WIDTH:
        return 1, query_dim
    return query_dim // _HEAD_WIDTH, _HEAD_WIDTH


@contextlib.contextmanager
def _compute_device(module: nn.Module) -> Iterator[None]:
    """The GLIGEN network on the server's compute device for the block (through the model
    manager, which may have moved it since the last call); as it is outside a server."""
    from plugins.core_nodes.models import adapters

    with adapters._using(adapters._manager(), [module]):
        yield


class Gligen(nn.Module):
    """The position net and the gated blocks, in the UNet's transformer order."""

    def __init__(self, blocks: Sequence[GatedSelfAttention], position_net: PositionNet, key_dim: int) -> None:
        super().__init__()
        self.module_list = nn.ModuleList(blocks)
        self.position_net = position_net
        self.key_dim = key_dim
        self.max_objs = MAX_OBJECTS

    def _patch(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> Patch:
        with _compute_device(self):
            param = next(self.parameters())
            objs = self.position_net(*(t.to(param.device, param.dtype) for t in (boxes, masks, embeddings)))

        def patch(x: torch.Tensor, extra_options: Mapping[str, Any]) -> torch.Tensor:
            index = int(extra_options["transformer_index"])
            if index >= len(self.module_list):
                raise GLIGENError(
                    f"this GLIGEN model has {len(self.module_list)} blocks but the UNet has more "
                    "transformers: it was made for another model"
                )
            block = self.module_list[index]
            # Every row of objs is the same boxes: a call batching several entries gets them all.
            tokens = objs if objs.shape[0] == x.shape[0] else objs[:1].expand(x.shape[0], -1, -1)
            with _compute_device(self):
                weight = block.linear.weight
                out = block(x.to(weight.device, weight.dtype), tokens.to(weight.device, weight.dtype))
            return out.to(x.device, x.dtype)

        return patch

    def set_position(self, latent_shape: Sequence[int], position_params: PositionParams, device: Any) -> Patch:
        """The ``middle_patch`` for these boxes ``(pooled, h, w, y, x)`` (latent pixels) on a
        latent of ``latent_shape`` ``[B, C, H, W]``."""
        batch, _, height, width = latent_shape
        if len(position_params) > self.max_objs:
            raise GLIGENError(f"GLIGEN takes at most {self.max_objs} text boxes, got {len(position_params)}")
        in_dim = self.position_net.in_dim
        # Unused slots stay zero with mask 0: the position net puts its null features there.
        boxes = torch.zeros(self.max_objs, 4)
        masks = torch.zeros(self.max_objs)
        embeddings = torch.zeros(self.max_objs, in_dim)
        for i, (pooled, h, w, y, x) in enumerate(position_params):
            flat = pooled.reshape(-1).float().cpu()
            if flat.shape[0] != in_dim:
                raise GLIGENError(
                    f"the text box's embedding has {flat.shape[0]} features but this GLIGEN model "
                    f"takes {in_dim}: use the text encoder it was made for"
                )
            boxes[i] = torch.tensor([x / width, y / height, (x + w) / width, (y + h) / height])
            masks[i] = 1.0
            embeddings[i] = flat
        return self._patch(
            boxes.unsqueeze(0).repeat(batch, 1, 1).to(device),
            masks.unsqueeze(0).repeat(batch, 1).to(device),
            embeddings.unsqueeze(0).repeat(batch, 1, 1).to(device),
        )

    def set_empty(self, latent_shape: Sequence[int], device: Any) -> Patch:
        """The patch with every slot empty (only the null features ground the image)."""
        return self.set_position(latent_shape, [], device)


def load_gligen(sd: Mapping[str, torch.Tensor], name: str = "the GLIGEN weights") -> Gligen:
    """A :class:`Gligen` from its single-file state dict (``name`` is what errors call it)."""
    grouped: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        found = _FUSER_KEY.match(key)
        if found:
            group, number, rest = found.groups()
            grouped.setdefault((_GROUPS.index(group), int(number)), {})[rest] = value
    if "position_net.null_positive_feature" not in sd or not grouped:
        raise GLIGENError(f"{name} is not a GLIGEN model: no position net or gated attention blocks found")
    blocks = []
    key_dim = _SD1_KEY_DIM
    for where in sorted(grouped):
        weights = grouped[where]
        if "linear.weight" not in weights:
            raise GLIGENError(f"{name}: a gated attention block has no grounding projection (linear.weight)")
        query_dim, key_dim = weights["linear.weight"].shape
        block = GatedSelfAttention(query_dim, key_dim, *_heads(query_dim, key_dim))
        _load(block, weights, name)
        blocks.append(block)
    in_dim = sd["position_net.null_positive_feature"].shape[0]
    first = sd.get("position_net.linears.0.weight")
    last = sd.get("position_net.linears.4.weight")
    if first is None or last is None:
        raise GLIGENError(f"{name}: the position net's layers are missing")
    position_dim = sd["position_net.null_position_feature"].shape[0]
    net = PositionNet(in_dim, last.shape[0], hidden=first.shape[0], freqs=position_dim // 8)
    _load(net, {k[len("position_net.") :]: v for k, v in sd.items() if k.startswith("position_net.")}, name)
    return Gligen(blocks, net, key_dim).eval()


def _load(module: nn.Module, weights: Mapping[str, torch.Tensor], name: str) -> None:
    try:
        module.load_state_dict(dict(weights), strict=True)
    except RuntimeError as e:
        raise GLIGENError(f"{name} has weights that do not fit a GLIGEN model ({str(e).splitlines()[0][:300]})") from None


def load_gligen_file(path: Any) -> Any:
    """GLIGENLoader: the file's :class:`Gligen` (cached by the model manager, on the compute
    dtype) wrapped as the reference's patcher (``.model`` is the network)."""
    from pathlib import Path

    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.checkpoint import load_state_dict
    from plugins.core_nodes.models.patcher import ModelPatcher

    manager = adapters._manager()
    dtype = adapters._compute_dtype(manager)

    def loader(file: Path, check: Callable[[], None]) -> Gligen:
        sd, _ = load_state_dict(file, check)
        module = load_gligen(sd, file.name)
        return module.to(dtype) if dtype is not None else module

    module: Gligen = adapters._load("gligen", Path(path), loader)
    load_device = manager.compute_device if manager is not None else torch.device("cpu")
    return ModelPatcher(module, load_device=load_device, offload_device=torch.device("cpu"))


__all__ = [
    "MAX_OBJECTS",
    "GLIGENError",
    "GatedSelfAttention",
    "Gligen",
    "PositionNet",
    "fourier_features",
    "load_gligen",
    "load_gligen_file",
]
