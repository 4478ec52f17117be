"""Helpers shared by the test node packs (some are loaded in worker processes).

Each pack still declares and registers its own nodes (names and categories stay in the pack);
only logic that is the same everywhere lives here.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kernel.progress import throw_if_interrupted


class IntEcho:
    """V1 base: one INT widget (default 0) returned unchanged; subclasses set ``CATEGORY``."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


def append_line(path: str, line: str) -> None:
    """Append ``line`` to the log at ``path`` (nothing when ``path`` is empty)."""
    if path:
        # One O_APPEND write per line keeps lines whole even if the process dies right after.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def interruptible_sleep(seconds: float) -> None:
    """Sleep in slices, checking for an interrupt as a real long-running node would."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        throw_if_interrupted()
        time.sleep(min(left, 0.02))
