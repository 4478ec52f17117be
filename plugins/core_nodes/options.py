"""The plugin's command-line option and how it is read back from ``settings.extra``."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel import Kernel


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}")
    return seconds


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("core nodes")
    group.add_argument(
        "--preview-interval",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="least time between two latent previews of one sampler (default 0: every step;"
        " the last step always sends one)",
    )


def preview_interval(kernel: Kernel) -> float:
    """``--preview-interval``; settings built in code may hold anything, which means 0."""
    value = (kernel.settings.extra or {}).get("preview_interval", 0.0)
    try:
        return _seconds(str(value))
    except argparse.ArgumentTypeError:
        return 0.0
