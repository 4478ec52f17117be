"""``comfy.sd``: only what is cheap to offer; the model classes live in the core nodes.

Packs that call into ComfyUI's model loading (``load_checkpoint_guess_config`` and friends) are
not supported by the compatibility layer; use the core loader nodes through the graph instead.
"""

from __future__ import annotations

from typing import Any

from comfy.utils import load_torch_file

__all__ = ["load_torch_file"]


def __getattr__(name: str) -> Any:
    raise AttributeError(f"comfy.sd.{name} is not provided by comfykernel's compatibility layer")
