"""A toy model stack satisfying ``plugins.core_nodes.contracts``, and a test plugin exposing it.

The diffusion model is the golden data's toy denoiser, ``x / (1 + sigma^2) + 0.1 * sin(x)``,
plus ``bias`` times the mean of each batch item's text embedding, so positive and negative
prompts differ.
"""

from __future__ import annotations

from typing import Any

import torch

from kernel import hookimpl
from plugins.core_nodes.contracts import SD15, LatentFormat
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete

TOY_FORMAT = LatentFormat("toy", 4, 1.0, SD15.rgb_factors)


class ToyModel:
    def __init__(self, bias: float = 0.0) -> None:
        self.model_sampling = ModelSamplingDiscrete()
        self.latent_format = TOY_FORMAT
        self.concat_channels = 0
        self.bias = bias
        self.calls: list[dict[str, Any]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        self.calls.append({"shape": tuple(x.shape), "sigma": float(sigma.reshape(-1)[0]), **cond})
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        out = x / (1 + s**2) + 0.1 * torch.sin(x)
        if self.bias:
            # Per batch item: the sampler runs cond and uncond as one batch.
            text = cond["c_crossattn"]
            out = out + self.bias * text.reshape(text.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
        return out


class ToyClip:
    def __init__(self, layer: int = -1) -> None:
        self.layer = layer

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        value = float(len(text)) / 10.0
        return torch.full((1, 77, 8), value), torch.full((1, 8), value)

    def with_last_layer(self, layer: int) -> ToyClip:
        return ToyClip(layer)


class ToyVAE:
    downscale_ratio = 8
    latent_format = TOY_FORMAT

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([small, small.mean(dim=1, keepdim=True)], dim=1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        big = torch.nn.functional.interpolate(latent[:, :3], scale_factor=8, mode="nearest")
        return big.clamp(0, 1).movedim(1, -1)

    def encode_tiled(self, pixels: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor:
        return self.encode(pixels)

    def decode_tiled(self, latent: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor:
        return self.decode(latent)


class ToyStackLoader:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"bias": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0})}}

    def load(self, bias: float) -> tuple[Any, Any, Any]:
        return (ToyModel(bias), ToyClip(), ToyVAE())


class toy_plugin:  # noqa: N801 - a plugin namespace, registered like a module
    @staticmethod
    @hookimpl
    def register_nodes(register: Any) -> None:
        register("ToyStackLoader", ToyStackLoader)


TOY_PLUGIN = ("toystack", toy_plugin)
