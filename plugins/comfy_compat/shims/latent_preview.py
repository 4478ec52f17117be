"""``latent_preview``: the per-step callback custom samplers hand to the sampling loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy.utils import ProgressBar


def get_previewer(device: Any, latent_format: Any) -> None:
    """Previews come from the core nodes' own sampler; a pack's loop reports progress only."""
    return None


def set_preview_method(method: str) -> None:
    return None


def prepare_callback(
    model: Any, steps: int, x0_output_dict: dict[str, Any] | None = None
) -> Callable[..., None]:
    bar = ProgressBar(steps)

    def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)

    return callback
