"""The InstantX / Union ControlNet of Flux: a shortened Flux transformer that reads the hint latent
and gives residuals for the main model's double and single blocks.

The files are diffusers ``FluxControlNetModel`` state dicts (``x_embedder``, ``time_text_embed``,
``context_embedder``, ``transformer_blocks.N`` / ``single_transformer_blocks.N`` with separate
q / k / v), plus ``controlnet_x_embedder`` (a linear over the VAE-encoded hint's 2x2 patches,
added to the image tokens), ``controlnet_blocks.N`` / ``controlnet_single_blocks.N`` (one linear
per block over the image tokens) and, in Union files, ``controlnet_mode_embedder`` (one learned
text token per control mode, put before the text). They are renamed to the single-file names
of :mod:`.flux` (q / k / v fused), so the blocks are the main model's code.

As the reference does, the residuals are spread over Flux-dev-sized main models (19 double and
38 single blocks, the size of every Flux.1): each of the ControlNet's ``n`` residuals covers
``ceil(19 / n)`` (``ceil(38 / n)``) consecutive main blocks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.core_nodes.models.flux import (
    PATCH,
    TIME_DIM,
    DoubleStreamBlock,
    FluxConfig,
    MLPEmbedder,
    SingleStreamBlock,
    default_axes,
    position_embedding,
    timestep_embedding,
)
from plugins.core_nodes.models.lora_flux import diffusers_targets
from plugins.core_nodes.models.lora_fused import rename_to_fused
from plugins.core_nodes.models.operations import TorchOperations, build_exactly

__all__ = ["FluxControlNet", "build_flux_controlnet", "is_flux_controlnet", "to_single_file"]

# Block counts of the main models these ControlNets steer (Flux.1 dev / schnell).
MAIN_DOUBLE, MAIN_SINGLE = 19, 38
_DOUBLE = re.compile(r"^(?:double_blocks|transformer_blocks)\.(\d+)\.")
_SINGLE = re.compile(r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\.")


class FluxControlNetError(ValueError):
    """The weights do not form a Flux ControlNet this server can build."""


def is_flux_controlnet(sd: Mapping[str, Any]) -> bool:
    """InstantX-style Flux ControlNet weights (diffusers' layout, or already renamed). XLabs'
    files (their own image encoder, ``input_hint_block``) are a different network, not read."""
    renamed = "pos_embed_input.weight" in sd and "double_blocks.0.img_attn.qkv.weight" in sd
    return (
        "controlnet_blocks.0.weight" in sd
        and "input_hint_block.0.weight" not in sd
        and ("controlnet_x_embedder.weight" in sd or renamed)
    )


def _count(sd: Mapping[str, Any], pattern: re.Pattern[str]) -> int:
    found = [int(m.group(1)) for k in sd if (m := pattern.match(k))]
    return 1 + max(found) if found else 0


# diffusers' norm names -> ours (LoRAs do not touch norms, so lora_flux's table lacks them).
_DOUBLE_NORMS = (
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
    ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
)
_SINGLE_NORMS = (
    ("attn.norm_q.weight", "norm.query_norm.scale"),
    ("attn.norm_k.weight", "norm.key_norm.scale"),
)


def to_single_file(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``FluxControlNetModel`` weights renamed to :mod:`.flux`'s names (q / k / v and
    the single blocks' MLP input fused into ``linear1``); renamed weights come back as they are."""
    if "controlnet_x_embedder.weight" not in sd:
        return dict(sd)
    try:
        hidden = int(sd["x_embedder.weight"].shape[0])
        mlp = int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0]) if "transformer_blocks.0.ff.net.0.proj.weight" in sd else 4 * hidden
    except KeyError as exc:
        raise FluxControlNetError(f"not Flux ControlNet weights (missing {exc})") from None
    config = FluxConfig(
        hidden_size=hidden, mlp_hidden=mlp, depth=_count(sd, _DOUBLE), depth_single_blocks=_count(sd, _SINGLE)
    )
    targets = diffusers_targets(config)
    norms = {f"transformer_blocks.{i}.{a}": f"double_blocks.{i}.{b}" for i in range(config.depth) for a, b in _DOUBLE_NORMS}
    norms.update(
        {f"single_transformer_blocks.{i}.{a}": f"single_blocks.{i}.{b}" for i in range(config.depth_single_blocks) for a, b in _SINGLE_NORMS}
    )
    norms["controlnet_x_embedder.weight"] = "pos_embed_input.weight"
    norms["controlnet_x_embedder.bias"] = "pos_embed_input.bias"
    # The ControlNet's own layers keep their names.
    return rename_to_fused(sd, targets, norms)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[FluxConfig, int, int]:
    """(block config, hint latent channels, Union modes) of renamed weights."""
    try:
        hidden, in_channels = (int(n) for n in sd["img_in.weight"].shape)
        head_dim = int(sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0])
        config = FluxConfig(
            in_channels=in_channels,
            out_channels=in_channels,
            vec_in_dim=int(sd["vector_in.in_layer.weight"].shape[1]),
            context_in_dim=int(sd["txt_in.weight"].shape[1]),
            hidden_size=hidden,
            mlp_hidden=int(sd["double_blocks.0.img_mlp.0.weight"].shape[0]),
            num_heads=hidden // head_dim,
            depth=_count(sd, _DOUBLE),
            depth_single_blocks=_count(sd, _SINGLE),
            axes_dim=default_axes(head_dim),
            qkv_bias="double_blocks.0.img_attn.qkv.bias" in sd,
            guidance_embed="guidance_in.in_layer.weight" in sd,
        )
        hint_channels = int(sd["pos_embed_input.weight"].shape[1]) // (PATCH * PATCH)
    except KeyError as exc:
        raise FluxControlNetError(f"not Flux ControlNet weights (missing {exc})") from None
    modes = sd.get("controlnet_mode_embedder.weight")
    return config, hint_channels, 0 if modes is None else int(modes.shape[0])


def _spread(residuals: Sequence[torch.Tensor], main_blocks: int) -> list[torch.Tensor | None]:
    """Each residual repeated over ``ceil(main / n)`` consecutive main blocks, cut at ``main``."""
    if not residuals:
        return []
    repeat = math.ceil(main_blocks / len(residuals))
    return [r for r in residuals for _ in range(repeat)][:main_blocks]


class FluxControlNet(nn.Module):
    """``forward(x, hint, timesteps, context, y=None, guidance=None, control_type=())`` ->
    ``{"input": [...], "output": [...]}``: residuals for the main model's image tokens after its
    double (``input``) and single (``output``) blocks."""

    def __init__(self, config: FluxConfig, hint_channels: int, union_modes: int = 0) -> None:
        super().__init__()
        ops, c = TorchOperations, config
        self.config = c
        self.img_in = nn.Linear(c.in_channels, c.hidden_size)
        self.time_in = MLPEmbedder(TIME_DIM, c.hidden_size, ops, None, None)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size, ops, None, None)
        if c.guidance_embed:
            self.guidance_in = MLPEmbedder(TIME_DIM, c.hidden_size, ops, None, None)
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(c, ops, None, None) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(c, ops, None, None) for _ in range(c.depth_single_blocks))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(c.hidden_size, c.hidden_size) for _ in range(c.depth))
        self.controlnet_single_blocks = nn.ModuleList(
            nn.Linear(c.hidden_size, c.hidden_size) for _ in range(c.depth_single_blocks)
        )
        self.pos_embed_input = nn.Linear(hint_channels * PATCH * PATCH, c.hidden_size)
        self.controlnet_mode_embedder = nn.Embedding(union_modes, c.hidden_size) if union_modes else None

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    @staticmethod
    def _patches(x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` (odd sizes padded circularly) -> ``[B, (H/2)(W/2), C*4]``."""
        pad_h, pad_w = (-x.shape[-2]) % PATCH, (-x.shape[-1]) % PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        b, _, h, w = x.shape
        hp, wp = h // PATCH, w // PATCH
        return x.reshape(b, -1, hp, PATCH, wp, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, hp * wp, -1)

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        control_type: Sequence[int] = (),
        **kwargs: Any,
    ) -> dict[str, list[torch.Tensor | None]]:
        c, dtype = self.config, self.dtype
        b = x.shape[0]
        hp, wp = (x.shape[-2] + 1) // PATCH, (x.shape[-1] + 1) // PATCH
        img = self.img_in(self._patches(x.to(dtype))) + self.pos_embed_input(self._patches(hint.to(dtype)))
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        vec = self.time_in(timestep_embedding(timesteps, TIME_DIM).to(dtype))
        if c.guidance_embed:
            if guidance is None:
                raise ValueError("this Flux ControlNet (dev) needs a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance.reshape(-1), TIME_DIM).to(dtype))
        pooled = torch.zeros(b, c.vec_in_dim, device=x.device, dtype=dtype) if y is None else y[:, : c.vec_in_dim].to(dtype)
        vec = vec + self.vector_in(pooled)
        txt = self.txt_in(context.to(dtype))
        if self.controlnet_mode_embedder is not None and len(control_type) > 0:
            # Union: the chosen modes' tokens go before the text.
            modes = self.controlnet_mode_embedder(torch.tensor(list(control_type), device=x.device))
            txt = torch.cat((modes.to(dtype).unsqueeze(0).expand(b, -1, -1), txt), dim=1)
        img_ids = torch.zeros(hp, wp, 3, device=x.device, dtype=torch.float32)
        img_ids[..., 1] = torch.arange(hp, device=x.device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(wp, device=x.device, dtype=torch.float32)[None, :]
        ids = torch.cat((torch.zeros(b, txt.shape[1], 3, device=x.device), img_ids.reshape(1, -1, 3).expand(b, -1, -1)), 1)
        pe = position_embedding(ids, c.axes_dim, c.theta)
        double: list[torch.Tensor] = []
        for block, proj in zip(self.double_blocks, self.controlnet_blocks, strict=True):
            img, txt = block(img, txt, vec, pe)
            double.append(proj(img))
        n_txt = txt.shape[1]
        tokens = torch.cat((txt, img), 1)
        single: list[torch.Tensor] = []
        for single_block, proj in zip(self.single_blocks, self.controlnet_single_blocks, strict=True):
            tokens = single_block(tokens, vec, pe)
            single.append(proj(tokens[:, n_txt:]))
        out: dict[str, list[torch.Tensor | None]] = {"input": _spread(double, MAIN_DOUBLE)}
        if single:
            out["output"] = _spread(single, MAIN_SINGLE)
        return out


def build_flux_controlnet(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> FluxControlNet:
    """The Flux ControlNet of these weights (diffusers' layout or renamed); missing or extra
    tensors are an error."""
    weights = to_single_file(sd)
    config, hint_channels, modes = config_from_state_dict(weights)
    return build_exactly(
        lambda: FluxControlNet(config, hint_channels, modes),
        weights,
        dtype or weights["img_in.weight"].dtype,
        lambda why: FluxControlNetError(f"Flux ControlNet weights do not fit the network read off them: {why}"),
    )
