"""A toy MODEL for guidance tests: the golden data's toy denoiser as a reference ``BaseModel``
inside a real :class:`ModelPatcher`, and a sampler that records what the guider predicts."""

from __future__ import annotations

from typing import Any

import torch

from plugins.core_nodes.models.patcher import ModelPatcher
from plugins.core_nodes.sampler_objects import KSAMPLER
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete

from .toy_stack import TOY_FORMAT


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2) + 0.1 * torch.sin(x)


class ToyNet(torch.nn.Module):
    """The toy denoiser as a reference ``BaseModel``: plus ``bias`` times each item's text mean."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias = bias
        self.model_sampling = ModelSamplingDiscrete()
        self.latent_format = TOY_FORMAT
        self.sigmas_seen: list[float] = []

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: Any = None,
        c_crossattn: Any = None,
        control: Any = None,
        transformer_options: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.sigmas_seen.append(float(t.reshape(-1)[0]))
        text = c_crossattn.reshape(c_crossattn.shape[0], -1).mean(dim=1).reshape(-1, 1, 1, 1)
        return toy_denoiser(x, t) + self.bias * text


def toy_patcher(bias: float) -> ModelPatcher:
    return ModelPatcher(ToyNet(bias), "cpu", "cpu")


def cond(value: float) -> list[list[Any]]:
    return [[torch.full((1, 77, 8), value), {"pooled_output": torch.full((1, 8), value)}]]


def recording_sampler(outputs: list[tuple[float, torch.Tensor]]) -> KSAMPLER:
    """A sampler that asks the guider for one prediction per sigma and records them."""

    def run(
        model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any, callback: Any, disable: Any
    ) -> Any:
        for sigma in sigmas[:-1]:
            outputs.append((float(sigma), model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)))
        return x

    return KSAMPLER(run)


def guided_offsets(guider: Any, sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """(sigma, prediction minus the plain toy denoiser) for each step of a run of ``guider``."""
    outputs: list[tuple[float, torch.Tensor]] = []
    latent = torch.zeros(1, 4, 8, 8)
    guider.sample(torch.zeros_like(latent), latent, recording_sampler(outputs), sigmas, seed=0)
    offsets = []
    for sigma, out in outputs:
        x = torch.zeros_like(latent)  # the recording sampler never moves x
        offsets.append((sigma, float((out - toy_denoiser(x, torch.tensor([sigma]))).mean())))
    return offsets


SIGMAS = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
