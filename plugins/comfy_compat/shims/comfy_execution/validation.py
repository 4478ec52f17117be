"""``comfy_execution.validation``: the link type check the server validates prompts with."""

from kernel.executor.validation import validate_node_input

__all__ = ["validate_node_input"]
