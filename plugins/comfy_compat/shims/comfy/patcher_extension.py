"""`comfy.patcher_extension`: wrapper / callback types and registries, and the wrapper executor.

The server honours ``WrappersMP.DIFFUSION_MODEL`` (around the UNet call) and
``WrappersMP.APPLY_MODEL`` (around one denoiser call) from a MODEL's wrappers; the sampling-level
types are the samplers' (``plugins.core_nodes`` sampling chain).
"""

from __future__ import annotations

from plugins.core_nodes.models.extension import (
    CallbacksMP,
    PatcherInjection,
    WrapperExecutor,
    WrappersMP,
    add_callback,
    add_callback_with_key,
    add_wrapper,
    add_wrapper_with_key,
    copy_nested_dicts,
    get_all_callbacks,
    get_all_wrappers,
    get_callbacks_with_key,
    get_wrappers_with_key,
    merge_nested_dicts,
)

__all__ = [
    "CallbacksMP",
    "PatcherInjection",
    "WrapperExecutor",
    "WrappersMP",
    "add_callback",
    "add_callback_with_key",
    "add_wrapper",
    "add_wrapper_with_key",
    "copy_nested_dicts",
    "get_all_callbacks",
    "get_all_wrappers",
    "get_callbacks_with_key",
    "get_wrappers_with_key",
    "merge_nested_dicts",
]
