"""Graph helpers for nodes that expand into sub-graphs, and the execution blocker value.

A node expands by returning ``{"result": (...), "expand": graph}`` where ``graph`` is an
API-format prompt fragment, usually built with :class:`GraphBuilder`. Builders created while a
node runs get deterministic ids ``<node_id>.<call_index>.<graph_index>.<n>`` so that expanded
nodes hit the cache across runs; the executor opens that scope with :func:`graph_prefix_scope`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


class ExecutionBlocker:
    """Returned in place of an output value: everything consuming it is skipped, not failed.

    With a ``message`` the executor reports an ``execution_error`` (type ``ExecutionBlocked``)
    once but keeps running the prompt; ``None`` blocks silently.
    """

    __slots__ = ("message",)

    def __init__(self, message: str | None = None) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


def is_link(value: Any) -> bool:
    """The executor's link test: ``[source_node_id: str, output_index: int | float]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    )


@dataclass
class _PrefixState:
    root: str = ""
    call_index: int = 0
    graph_index: int = 0


# Context-local so concurrent async nodes (each in its own task) never share a counter.
_PREFIX: ContextVar[_PrefixState | None] = ContextVar("comfykernel_graph_prefix", default=None)


def set_default_prefix(root: str, call_index: int, graph_index: int = 0) -> None:
    """Make builders created without a prefix use ``<root>.<call_index>.<graph_index>.``."""
    _PREFIX.set(_PrefixState(root, call_index, graph_index))


@contextlib.contextmanager
def graph_prefix_scope(node_id: str, call_index: int) -> Iterator[None]:
    """Scope for one function call of one node: builders inside get that node's id prefix."""
    token = _PREFIX.set(_PrefixState(node_id, call_index, 0))
    try:
        yield
    finally:
        _PREFIX.reset(token)


def alloc_prefix(
    root: str | None = None, call_index: int | None = None, graph_index: int | None = None
) -> str:
    state = _PREFIX.get()
    if state is None:
        state = _PrefixState()
        _PREFIX.set(state)
    root = state.root if root is None else root
    call_index = state.call_index if call_index is None else call_index
    if graph_index is None:
        graph_index = state.graph_index
        state.graph_index += 1
    return f"{root}.{call_index}.{graph_index}."


class GraphNode:
    """One node of a graph under construction."""

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id = node_id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        """A link to this node's output ``index``."""
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            data["override_display_id"] = self.override_display_id
        return data


class GraphBuilder:
    """Build an API-format graph: ``node(...)`` adds nodes, ``finalize()`` returns the dict."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, GraphNode] = {}
        self._next_id = 1

    @classmethod
    def set_default_prefix(cls, root: str, call_index: int, graph_index: int = 0) -> None:
        set_default_prefix(root, call_index, graph_index)

    @classmethod
    def alloc_prefix(
        cls, root: str | None = None, call_index: int | None = None, graph_index: int | None = None
    ) -> str:
        return alloc_prefix(root, call_index, graph_index)

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> GraphNode:  # noqa: A002
        """Add a node (auto-numbered unless ``id`` is given); an existing id returns that node."""
        if id is None:
            id = str(self._next_id)
            self._next_id += 1
        full_id = self.prefix + id
        existing = self.nodes.get(full_id)
        if existing is not None:
            return existing
        node = GraphNode(full_id, class_type, dict(inputs))
        self.nodes[full_id] = node
        return node

    def lookup_node(self, id: str) -> GraphNode | None:  # noqa: A002
        return self.nodes.get(self.prefix + id)

    def remove_node(self, id: str) -> None:  # noqa: A002
        self.nodes.pop(self.prefix + id, None)

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Re-point every input linked to ``node_id``'s output ``index`` at ``new_value``."""
        full_id = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == full_id and value[1] == index:
                    node.set_input(key, new_value)

    def finalize(self) -> dict[str, Any]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}


def add_graph_prefix(
    graph: dict[str, Any], outputs: tuple[Any, ...], prefix: str
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Prefix every node id of ``graph`` (and the links into it from ``outputs``)."""

    def fix(value: Any) -> Any:
        return [prefix + value[0], value[1]] if is_link(value) else value

    new_graph = {
        prefix + node_id: {**node, "inputs": {k: fix(v) for k, v in node.get("inputs", {}).items()}}
        for node_id, node in graph.items()
    }
    return new_graph, tuple(fix(o) for o in outputs)
