"""A node pack for process-level history tests, loaded through COMFYKERNEL_EXTRA_PLUGINS.

``HistorySlow`` sleeps, appends its tag to a run log (so a test can count how often each prompt
really ran, across processes) and returns the tag as UI text.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kernel import hookimpl
from kernel.progress import throw_if_interrupted


class HistorySlow:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "tag": ("STRING", {"default": ""}),
                "seconds": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 600.0}),
                "log_path": ("STRING", {"default": ""}),
            }
        }

    def run(self, tag: str, seconds: float, log_path: str) -> dict[str, Any]:
        if log_path:
            # One O_APPEND write per line keeps lines whole even if the process dies right after.
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"start {tag}\n".encode())
            finally:
                os.close(fd)
        # Sleep in slices, checking for an interrupt as a real long-running node would.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            throw_if_interrupted()
            time.sleep(min(left, 0.02))
        return {"ui": {"text": [tag]}}


@hookimpl
def register_nodes(register: Any) -> None:
    register("HistorySlow", HistorySlow)
