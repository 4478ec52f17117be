"""Test nodes for the distributed tests, loaded in worker processes through COMFYKERNEL_EXTRA_PLUGINS.

``DistWork`` logs ``start <tag> <pid>`` (so a test can tell which worker ran what, and how often),
reports progress in steps, checks for interrupts, saves a small output file and shows its tag and
pid. ``DistBurn`` is CPU-bound (for the benchmark); ``DistCrash`` kills its worker process.
"""

from __future__ import annotations

import os
from typing import Any

from kernel import hookimpl
from kernel.progress import ProgressBar
from tests.nodepack.common import append_line, interruptible_sleep


def make_nodes(output_dir: Any) -> dict[str, type]:
    class DistWork:
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
                    "steps": ("INT", {"default": 4, "min": 1, "max": 1000}),
                    "log_path": ("STRING", {"default": ""}),
                }
            }

        def run(self, tag: str, seconds: float, steps: int, log_path: str) -> dict[str, Any]:
            append_line(log_path, f"start {tag} {os.getpid()}")
            bar = ProgressBar(steps)
            for _ in range(steps):
                interruptible_sleep(seconds / steps)
                bar.update(1)
            folder = output_dir / "dist"
            folder.mkdir(parents=True, exist_ok=True)
            # The same name on every worker: the API server must keep both files apart.
            (folder / "result.txt").write_text(f"{tag} from {os.getpid()}")
            append_line(log_path, f"done {tag} {os.getpid()}")
            return {
                "ui": {
                    "text": [tag],
                    "pid": [os.getpid()],
                    "images": [{"filename": "result.txt", "subfolder": "dist", "type": "output"}],
                }
            }

    class DistBurn:
        CATEGORY = "testing"
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {
                "required": {"n": ("INT", {"default": 1000, "min": 1, "max": 10**9}), "seed": ("INT", {})}
            }

        def run(self, n: int, seed: int) -> dict[str, Any]:
            total = seed
            for i in range(n):
                total = (total * 31 + i) % 1_000_003
            return {"ui": {"value": [total]}}

    class DistCrash:
        CATEGORY = "testing"
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"log_path": ("STRING", {"default": ""})}}

        def run(self, log_path: str) -> dict[str, Any]:
            append_line(log_path, f"crash {os.getpid()}")
            os._exit(3)

    return {"DistWork": DistWork, "DistBurn": DistBurn, "DistCrash": DistCrash}


@hookimpl
def register_nodes(register: Any, kernel: Any) -> None:
    for name, cls in make_nodes(kernel.settings.output_path).items():
        register(name, cls)
