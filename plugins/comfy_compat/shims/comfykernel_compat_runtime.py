"""The kernel the compatibility modules speak for.

ComfyUI's modules are process globals (``folder_paths``, ``PromptServer.instance``), so they need
one kernel to answer for. This module is loaded fresh each time the shims are installed and
dropped when they are removed, so the binding lives exactly as long as the plugin is enabled.
"""

from __future__ import annotations

from typing import Any

_bound: dict[str, Any] = {}


def bind(kernel: Any, state: Any) -> None:
    _bound["kernel"] = kernel
    _bound["state"] = state


def kernel() -> Any:
    try:
        return _bound["kernel"]
    except KeyError:
        raise RuntimeError("the comfy_compat plugin is not enabled in any running kernel") from None


def state() -> Any:
    kernel()
    return _bound["state"]
