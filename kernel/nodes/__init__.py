"""The node contract, public for plugin and node-pack authors.

* :class:`NodeSpec` — the uniform view over a V1 node class (``INPUT_TYPES``, ``RETURN_TYPES``,
  ``FUNCTION``...) or a V3 schema class (``define_schema`` / ``execute``); :func:`node_specs`
  gives a kernel's cached specs by class name.
* :class:`ExecutionBlocker`, :class:`GraphBuilder` (node expansion), :func:`is_link`.
* ``kernel.nodes.v3`` — the schema API for V3 nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.nodes import v3
from kernel.nodes.graph import (
    ExecutionBlocker,
    GraphBuilder,
    GraphNode,
    add_graph_prefix,
    alloc_prefix,
    graph_prefix_scope,
    is_link,
    set_default_prefix,
)
from kernel.nodes.spec import InputInfo, NodeResult, NodeSpec, is_v3_class, node_spec
from kernel.stash import StashKey

if TYPE_CHECKING:
    from kernel.app import Kernel
    from kernel.registry import NodeRegistry


class NodeSpecs:
    """Specs of one registry, each built on first use and kept for the kernel's life."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry
        self._specs: dict[str, NodeSpec] = {}

    def get(self, class_type: str) -> NodeSpec | None:
        # One dict lookup for the known classes: validation asks about every node and link of
        # every POST /prompt.
        try:
            return self._specs[class_type]
        except (KeyError, TypeError):
            pass
        if not isinstance(class_type, str):  # prompts are client data: class_type may be anything
            return None
        spec = self._specs.get(class_type)
        if spec is None:
            entry = self.registry.get(class_type)
            if entry is None:
                return None
            spec = self._specs[class_type] = node_spec(entry)
        return spec

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self.registry

    def names(self) -> list[str]:
        return self.registry.names()


SPECS_KEY = StashKey[NodeSpecs]()


def node_specs(kernel: Kernel) -> NodeSpecs:
    """The kernel's NodeSpecs cache (created on first call)."""
    specs = kernel.stash.get(SPECS_KEY, None)
    if specs is None:
        specs = kernel.stash.setdefault(SPECS_KEY, NodeSpecs(kernel.nodes))
    return specs


__all__ = [
    "ExecutionBlocker",
    "GraphBuilder",
    "GraphNode",
    "InputInfo",
    "NodeResult",
    "NodeSpec",
    "NodeSpecs",
    "add_graph_prefix",
    "alloc_prefix",
    "graph_prefix_scope",
    "is_link",
    "is_v3_class",
    "node_spec",
    "node_specs",
    "set_default_prefix",
    "v3",
]
