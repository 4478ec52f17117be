"""``comfy_execution.graph``: ``ExecutionBlocker`` is the kernel's own class (the executor checks it)."""

from kernel.nodes import ExecutionBlocker

__all__ = ["ExecutionBlocker"]
