"""The reference's table-driven schedulers: AlignYourStepsScheduler and GITSScheduler.

Both publish optimised noise levels for a few step counts (NVIDIA's "Align Your Steps",
arXiv:2404.14507; "GITS", arXiv:2405.11326) and reach other step counts by interpolating
log-sigma linearly over a uniform grid. The tables are the published numbers; GITS's (one row per
step count 2-20 for each coefficient) lives in ``gits_noise_levels.json`` next to this module.
``denoise`` < 1 keeps the last ``round(steps * denoise)`` steps, and the final sigma is 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from plugins.core_nodes.nodes.common import ClassExecute, CoreNode

# Align Your Steps noise levels, 10 steps each, from the paper's project page.
AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "SD1": (
        14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
        0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582,
    ),
    "SDXL": (
        14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
        0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
    ),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}  # fmt: skip
GITS_TABLE_FILE = Path(__file__).with_name("gits_noise_levels.json")
# GITS rows exist for 2..GITS_MAX_TABLE_STEPS steps; longer schedules stretch the last row.
GITS_MAX_TABLE_STEPS = 20


@lru_cache(maxsize=1)
def gits_noise_levels() -> dict[str, list[list[float]]]:
    """coefficient ("0.80" ... "1.50") -> one row of sigmas per step count (2, 3, ... 20).
    Read once: it is constant data, cached so every scheduler call shares one parse."""
    table: dict[str, list[list[float]]] = json.loads(GITS_TABLE_FILE.read_text())
    return table


def loglinear_interp(levels: Sequence[float], count: int) -> list[float]:
    """``count`` decreasing sigmas whose logs interpolate those of ``levels`` linearly over a
    uniform grid on [0, 1] (numpy in float64, as the published recipe does)."""
    import numpy as np

    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    new_ys = np.interp(np.linspace(0, 1, count), xs, ys)
    return [float(v) for v in np.exp(new_ys)[::-1]]


def _finish(levels: Sequence[float], steps: int, denoise: float) -> Any:
    """The last ``round(steps * denoise)`` steps of ``levels`` (``steps`` + 1 sigmas), ending in 0."""
    import torch

    if denoise <= 0.0:
        return torch.FloatTensor([])
    total = round(steps * denoise) if denoise < 1.0 else steps
    kept = list(levels)[-(total + 1) :]
    kept[-1] = 0.0
    return torch.FloatTensor(kept)


def align_your_steps_sigmas(model_type: str, steps: int, denoise: float = 1.0) -> Any:
    try:
        levels: Sequence[float] = AYS_NOISE_LEVELS[model_type]
    except KeyError:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(AYS_NOISE_LEVELS)}") from None
    if steps + 1 != len(levels):
        levels = loglinear_interp(levels, steps + 1)
    return _finish(levels, steps, denoise)


def gits_sigmas(coeff: float, steps: int, denoise: float = 1.0) -> Any:
    rows = gits_noise_levels().get(f"{round(coeff, 2):.2f}")
    if rows is None:
        raise ValueError(f"GITS has no table for coeff {coeff}; use 0.80 to 1.50 in steps of 0.05")
    if steps < 2:
        raise ValueError("GITS needs at least 2 steps")
    if steps <= GITS_MAX_TABLE_STEPS:
        levels: Sequence[float] = rows[steps - 2]
    else:
        levels = loglinear_interp(rows[-1], steps + 1)
    return _finish(levels, steps, denoise)


class _Scheduler(ClassExecute, CoreNode):
    CATEGORY = "model/sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    # The reference's schema names no display name: /object_info says null.
    PUBLISH_NULL_DISPLAY_NAME: ClassVar[bool] = True


class AlignYourStepsScheduler(_Scheduler):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_align_your_steps"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model_type": ("COMBO", {"multiselect": False, "options": list(AYS_NOISE_LEVELS)}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, model_type: str, steps: int, denoise: float) -> tuple[Any]:
        return (align_your_steps_sigmas(model_type, steps, denoise),)


class GITSScheduler(_Scheduler):
    RELATIVE_PYTHON_MODULE: ClassVar[str] = "comfy_extras.nodes_gits"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "coeff": ("FLOAT", {"advanced": True, "default": 1.2, "min": 0.8, "max": 1.5, "step": 0.05}),
                "steps": ("INT", {"default": 10, "min": 2, "max": 1000}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    def get_sigmas(self, coeff: float, steps: int, denoise: float) -> tuple[Any]:
        return (gits_sigmas(coeff, steps, denoise),)


NODES: dict[str, tuple[type, str | None]] = {
    "AlignYourStepsScheduler": (AlignYourStepsScheduler, None),
    "GITSScheduler": (GITSScheduler, None),
}
