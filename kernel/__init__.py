"""comfykernel: a plugin microkernel that speaks ComfyUI's HTTP + WebSocket API.

A plugin is a module of ``@hookimpl`` functions, advertised under the ``comfykernel.plugins``
entry-point group::

    # pyproject.toml
    [project.entry-points."comfykernel.plugins"]
    my_nodes = "my_nodes.plugin"

    # my_nodes/plugin.py
    from kernel import hookimpl

    class Invert:
        CATEGORY = "image"
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE",)}}

        def run(self, image):
            return (1.0 - image,)

    @hookimpl
    def register_nodes(register):
        register("Invert", Invert, display_name="Invert Image")

The hooks are listed in ``kernel.hookspecs`` and documented in ``docs/plugin_hooks.md``.
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("comfykernel")

from kernel.torchvision_ops import install_torchvision_hook  # noqa: E402

# Packs, spandrel (upscale models) and transformers import torchvision, whose PyPI wheels cannot
# load their compiled ops beside the CPU torch: every process that runs a kernel gets the fix
# (see kernel/torchvision_ops.py). The hook is lazy: nothing is imported until torchvision is.
install_torchvision_hook()

from kernel.app import KERNEL_KEY, Kernel, build_app  # noqa: E402
from kernel.errors import KernelError, StartupError, UsageError  # noqa: E402
from kernel.nodes import ExecutionBlocker, GraphBuilder, NodeSpec, node_specs  # noqa: E402
from kernel.settings import Settings  # noqa: E402
from kernel.stash import StashKey  # noqa: E402

__all__ = [
    "ExecutionBlocker",
    "GraphBuilder",
    "KERNEL_KEY",
    "Kernel",
    "KernelError",
    "NodeSpec",
    "Settings",
    "StartupError",
    "StashKey",
    "UsageError",
    "build_app",
    "hookimpl",
    "node_specs",
]
