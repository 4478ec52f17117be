"""``comfy_execution.graph``: the kernel's own graph classes under the reference's names.

``ExecutionBlocker`` is the class the kernel's executor checks, and ``DynamicPrompt`` /
``ExecutionList`` are the executor's own, so a pack's ``isinstance`` checks and its type hints
mean the same objects the server runs with.
"""

from __future__ import annotations

from typing import Any

from kernel.executor.graph import (
    DependencyCycleError,
    DynamicPrompt,
    ExecutionList,
    NodeInputError,
    NodeNotFoundError,
)
from kernel.nodes import ExecutionBlocker

__all__ = [
    "DependencyCycleError",
    "DynamicPrompt",
    "ExecutionBlocker",
    "ExecutionList",
    "NodeInputError",
    "NodeNotFoundError",
    "get_input_info",
]


def get_input_info(
    class_def: type, input_name: str, valid_inputs: dict[str, Any] | None = None
) -> tuple[Any, str | None, dict[str, Any] | None]:
    """(type, ``"required"``/``"optional"``/``"hidden"``, options) of one declared input, or
    ``(None, None, None)`` when the node has no input of that name."""
    declared = valid_inputs if valid_inputs is not None else class_def.INPUT_TYPES()
    for category in ("required", "optional", "hidden"):
        entry = (declared.get(category) or {}).get(input_name)
        if entry is None:
            continue
        if category == "hidden":
            return entry, category, None
        input_type = entry[0] if isinstance(entry, tuple | list) else entry
        options = entry[1] if isinstance(entry, tuple | list) and len(entry) > 1 else None
        return input_type, category, options
    return None, None, None
