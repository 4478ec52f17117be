"""The plugin's command-line options and how they are read back from ``settings.extra``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from kernel import Kernel

DEFAULT_MAX_ITEMS = 10_000
DEFAULT_MAX_ATTEMPTS = 2


class HistoryOptions(msgspec.Struct, frozen=True):
    max_items: int = DEFAULT_MAX_ITEMS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("history")
    group.add_argument(
        "--history-max-items",
        type=int,
        default=DEFAULT_MAX_ITEMS,
        metavar="N",
        help=f"finished prompts kept in history, oldest evicted first (default {DEFAULT_MAX_ITEMS})",
    )
    group.add_argument(
        "--history-max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help="runs a prompt gets when the server dies while it executes; then it is marked failed"
        f" (default {DEFAULT_MAX_ATTEMPTS})",
    )


def read_options(kernel: Kernel) -> HistoryOptions:
    """Kernels built without the CLI (tests, embedding hosts) may lack the keys: use defaults."""
    extra = kernel.settings.extra
    max_items = extra.get("history_max_items")
    max_attempts = extra.get("history_max_attempts")
    return HistoryOptions(
        max_items=max(1, int(max_items)) if max_items is not None else DEFAULT_MAX_ITEMS,
        max_attempts=max(1, int(max_attempts)) if max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
    )
