"""A node pack for process-level history tests, loaded through COMFYKERNEL_EXTRA_PLUGINS.

``HistorySlow`` sleeps, appends its tag to a run log (so a test can count how often each prompt
really ran, across processes) and returns the tag as UI text.
"""

from __future__ import annotations

from typing import Any

from kernel import hookimpl
from tests.nodepack.common import append_line, interruptible_sleep


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
        append_line(log_path, f"start {tag}")
        interruptible_sleep(seconds)
        return {"ui": {"text": [tag]}}


@hookimpl
def register_nodes(register: Any) -> None:
    register("HistorySlow", HistorySlow)
