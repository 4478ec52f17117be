"""``comfy_extras.nodes_custom_sampler``: the noise and guider helpers packs build samplers from.

``Noise_EmptyNoise``, ``Noise_RandomNoise`` and ``Guider_Basic`` are defined here (Easy-Use and
Impact-Pack construct them); the node classes of the reference module come from the kernel's
registry when it has them.
"""

from __future__ import annotations

from typing import Any

import comfy.sample
import comfy.samplers
import torch
from comfy_extras._exports import module_attributes


class Noise_EmptyNoise:  # noqa: N801 - the reference's class name
    """No noise: zeros shaped like the latent (img2img from the latent as it is)."""

    def __init__(self) -> None:
        self.seed = 0

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


class Noise_RandomNoise:  # noqa: N801 - the reference's class name
    """The KSampler's seeded noise for a latent (``batch_index`` honoured)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        samples = input_latent["samples"]
        return comfy.sample.prepare_noise(samples, self.seed, input_latent.get("batch_index"))


class Guider_Basic(comfy.samplers.CFGGuider):  # noqa: N801 - the reference's class name
    """A guider with a positive prompt only (no CFG): for distilled models such as Flux."""

    def set_conds(self, positive: Any) -> None:  # type: ignore[override]
        self.inner_set_conds({"positive": positive})


__getattr__, __dir__ = module_attributes(
    __name__,
    {
        "Noise_EmptyNoise": Noise_EmptyNoise,
        "Noise_RandomNoise": Noise_RandomNoise,
        "Guider_Basic": Guider_Basic,
    },
)
