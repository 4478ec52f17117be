"""``POST /free`` for the core nodes: hand the request to the model manager, if it is loaded."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel import Kernel

MANAGER_MODULE = "plugins.core_nodes.models.manager"


def request_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> bool:
    """Forward to ``manager.request_free(kernel, unload_models, free_memory)``; True if forwarded.

    A manager that was never imported holds no models, so there is nothing to free and no reason
    to import torch on the event loop.
    """
    manager = sys.modules.get(MANAGER_MODULE)
    fn = getattr(manager, "request_free", None) if manager is not None else None
    if not callable(fn):
        return False
    fn(kernel, unload_models, free_memory)
    return True
