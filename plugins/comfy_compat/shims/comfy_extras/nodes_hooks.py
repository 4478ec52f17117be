"""``comfy_extras.nodes_hooks``: the reference's hook node classes, as the kernel registered them
(:mod:`plugins.core_nodes.nodes.hooks`), under their node names and under the reference's Python
class names where those differ (``CombineHooks`` is CombineHooks2...). Each class carries the
reference's ``NodeId`` / ``NodeName``; AnimateDiff-Evolved subclasses ``CreateHookModelAsLora``
and calls ``SetClipHooks.apply_hooks``."""

from __future__ import annotations

from typing import Any

from comfy_extras._exports import module_attributes
from comfykernel_compat_runtime import kernel as _kernel

# The reference's class names for the nodes whose id differs.
_CLASS_NAMES = {
    "CombineHooks": "CombineHooks2",
    "CombineHooksFour": "CombineHooks4",
    "CombineHooksEight": "CombineHooks8",
    "ConditioningSetDefaultAndCombine": "ConditioningSetDefaultCombine",
    "PairConditioningSetDefaultAndCombine": "PairConditioningSetDefaultCombine",
}

_by_node, _dir = module_attributes(__name__)


def __getattr__(name: str) -> Any:
    node = _CLASS_NAMES.get(name)
    if node is not None:
        entry = _kernel().nodes.get(node)
        if entry is not None:
            return entry.cls
    return _by_node(name)


def __dir__() -> list[str]:
    return sorted({*_dir(), *_CLASS_NAMES})
