"""``POST /free`` and the end of each prompt, forwarded to the model manager once it is loaded.

The manager only *marks* a ``/free`` (:func:`plugins.core_nodes.models.manager.on_free`) and
applies it between prompts: on the event loop when a prompt finishes or at once, but only while
the executor is idle (:func:`~plugins.core_nodes.models.manager.between_prompts`), so an idle
server releases its models without waiting for another prompt; otherwise in the executor thread
before the next prompt's first node (:func:`~plugins.core_nodes.models.manager.before_node`).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel import Kernel

MANAGER_MODULE = "plugins.core_nodes.models.manager"


def _manager_module() -> ModuleType | None:
    # A manager that was never imported holds no models, so there is nothing to free and no
    # reason to import torch on the event loop.
    return sys.modules.get(MANAGER_MODULE)


def request_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> bool:
    """Mark the request with ``manager.on_free``; apply it now if no prompt runs. True if forwarded."""
    manager = _manager_module()
    on_free = getattr(manager, "on_free", None)
    if not callable(on_free):
        return False
    on_free(kernel, unload_models, free_memory)
    executor = getattr(kernel, "executor", None)
    if executor is None or getattr(executor, "current", None) is None:
        between_prompts(kernel)
    return True


def between_prompts(kernel: Kernel) -> bool:
    """Apply pending ``/free`` work (``manager.between_prompts``); True if the manager is loaded."""
    manager = _manager_module()
    apply = getattr(manager, "between_prompts", None)
    if not callable(apply):
        return False
    apply(kernel)
    return True


def before_node(kernel: Kernel) -> bool:
    """Executor thread, before each node: ``manager.before_node``; True if the manager is loaded."""
    manager = _manager_module()
    apply = getattr(manager, "before_node", None)
    if not callable(apply):
        return False
    apply(kernel)
    return True
