"""The live graph of one prompt and the order its nodes run in.

``DynamicPrompt`` is the prompt plus the ephemeral nodes that expansions add while it runs.
``ExecutionList`` decides which node runs next with the reference's rules: a node is staged
once nothing it strongly depends on is pending; lazy inputs are followed only when asked for;
async nodes and nodes feeding outputs are preferred so results reach the user early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kernel.nodes.graph import is_link


class NodeNotFoundError(Exception):
    """A link or lookup named a node id that is neither in the prompt nor ephemeral."""


class NodeInputError(Exception):
    """``check_lazy_status`` asked for an input that is missing or not a link."""


class DependencyCycleError(Exception):
    """Expansion created a cycle: no pending node can ever become ready."""


class DynamicPrompt:
    """The prompt being executed plus the nodes expansions add to it (``DYNPROMPT``)."""

    def __init__(self, original_prompt: dict[str, Any]) -> None:
        self.original_prompt = original_prompt
        self.ephemeral_prompt: dict[str, Any] = {}
        self.ephemeral_parents: dict[str, str] = {}
        self.ephemeral_display: dict[str, str] = {}
        # Filled as nodes are added, so the lookups below stay O(1) however deeply expansions
        # nest (walking the parent chain made a self-expanding loop quadratic).
        self._real: dict[str, str] = {}
        self._display: dict[str, str] = {}
        self._depth: dict[str, int] = {}

    def get_node(self, node_id: str) -> dict[str, Any]:
        node = self.ephemeral_prompt.get(node_id)
        if node is None:
            node = self.original_prompt.get(node_id)
        if node is None:
            raise NodeNotFoundError(f"Node {node_id} not found")
        return node

    def has_node(self, node_id: str) -> bool:
        return node_id in self.original_prompt or node_id in self.ephemeral_prompt

    def add_ephemeral_node(
        self, node_id: str, node_info: dict[str, Any], parent_id: str, display_id: str
    ) -> None:
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id
        self._real[node_id] = self.get_real_node_id(parent_id)
        self._display[node_id] = self.get_display_node_id(display_id)
        self._depth[node_id] = self.depth(parent_id) + 1

    def is_ephemeral(self, node_id: str) -> bool:
        return node_id in self.ephemeral_parents

    def depth(self, node_id: str) -> int:
        """How many expansions deep ``node_id`` was created (0 for the prompt's own nodes)."""
        return self._depth.get(node_id, 0)

    def get_real_node_id(self, node_id: str) -> str:
        real = self._real.get(node_id)
        if real is not None:
            return real
        while node_id in self.ephemeral_parents:
            node_id = self.ephemeral_parents[node_id]
        return node_id

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        display = self._display.get(node_id)
        if display is not None:
            return display
        seen: set[str] = set()
        while node_id in self.ephemeral_display and node_id not in seen:
            seen.add(node_id)
            node_id = self.ephemeral_display[node_id]
        return node_id

    def node_count(self) -> int:
        return len(self.original_prompt) + len(self.ephemeral_prompt)

    def all_node_ids(self) -> set[str]:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict[str, Any]:
        return self.original_prompt


class ExecutionList:
    """Pending nodes, their blocking edges and the pick rule.

    ``is_available(node_id)`` says whether a node's outputs already exist (cached or run in
    this prompt); available sources are never staged. ``node_traits(class_type)`` returns
    ``(lazy_input_names, is_output_node, is_async)`` for a class.
    """

    def __init__(
        self,
        dynprompt: DynamicPrompt,
        is_available: Callable[[str], bool],
        node_traits: Callable[[str], tuple[frozenset[str], bool, bool]],
        on_pending: Callable[[str], None] | None = None,
    ) -> None:
        self.dynprompt = dynprompt
        self.is_available = is_available
        self.node_traits = node_traits
        # Told of every node that becomes pending (the run counts who still needs each output).
        self.on_pending = on_pending
        self.pending: dict[str, None] = {}
        self.block_count: dict[str, int] = {}
        # source -> {target -> {source output index}}
        self.blocking: dict[str, dict[str, set[Any]]] = {}
        self.staged_node_id: str | None = None
        self.external_blocks = 0
        self._unblocked = asyncio.Event()
        # Ready nodes (block count 0) with their insertion rank, so staging never scans the
        # whole pending set: the pick rule only looks at ready nodes, in pending order.
        self._ready: dict[str, int] = {}
        self._rank: dict[str, int] = {}
        self._next_rank = 0

    def is_empty(self) -> bool:
        return not self.pending

    def _traits(self, node_id: str) -> tuple[frozenset[str], bool, bool]:
        return self.node_traits(self.dynprompt.get_node(node_id)["class_type"])

    def add_node(
        self, node_id: str, include_lazy: bool = False, subgraph_nodes: set[str] | None = None
    ) -> None:
        # Explicit stack: a 2,000-deep chain must not hit the recursion limit.
        stack = [node_id]
        links: list[tuple[str, Any, str]] = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = None
            self.block_count[current] = 0
            self.blocking[current] = {}
            self._rank[current] = self._next_rank
            self._next_rank += 1
            self._ready[current] = self._rank[current]
            if self.on_pending is not None:
                self.on_pending(current)
            node = self.dynprompt.get_node(current)
            lazy_inputs = self._traits(current)[0]
            for input_name, value in node.get("inputs", {}).items():
                if not is_link(value):
                    continue
                source = value[0]
                if subgraph_nodes is not None and source not in subgraph_nodes:
                    continue
                if not include_lazy and input_name in lazy_inputs:
                    continue
                if not self.is_available(source):
                    stack.append(source)
                links.append((source, value[1], current))
        for source, socket, target in links:
            self.add_strong_link(source, socket, target)

    def add_strong_link(self, source: str, socket: Any, target: str) -> None:
        if self.is_available(source):
            return
        self.add_node(source)
        targets = self.blocking[source]
        if target not in targets:
            targets[target] = set()
            self._block(target)
        targets[target].add(socket)

    def make_input_strong_link(self, node_id: str, input_name: str) -> None:
        inputs = self.dynprompt.get_node(node_id).get("inputs", {})
        if input_name not in inputs:
            raise NodeInputError(f"Node {node_id} asked for input {input_name!r}, which it does not have")
        value = inputs[input_name]
        if not is_link(value):
            raise NodeInputError(
                f"Node {node_id} asked for input {input_name!r}, which is a constant, not a link"
            )
        self.add_strong_link(value[0], value[1], node_id)

    def add_external_block(self, node_id: str) -> Callable[[], None]:
        """Hold ``node_id`` back until the returned function is called (async work pending)."""
        self.external_blocks += 1
        self._block(node_id)

        def unblock() -> None:
            self.external_blocks -= 1
            self._unblock(node_id)
            self._unblocked.set()

        return unblock

    def _block(self, node_id: str) -> None:
        self.block_count[node_id] += 1
        self._ready.pop(node_id, None)

    def _unblock(self, node_id: str) -> None:
        self.block_count[node_id] -= 1
        if self.block_count[node_id] == 0 and node_id in self.pending:
            self._ready[node_id] = self._rank[node_id]

    async def stage_node_execution(self, check_interrupt: Callable[[], None]) -> str:
        """The next node to run; waits for async work when nothing else is ready.

        ``check_interrupt`` raises to abandon the wait; a stuck graph raises DependencyCycleError.
        """
        assert self.staged_node_id is None
        while True:
            ready = (
                sorted(self._ready, key=self._ready.__getitem__)
                if len(self._ready) > 1
                else list(self._ready)
            )
            if ready:
                self.staged_node_id = self._pick(ready)
                return self.staged_node_id
            if self.external_blocks == 0:
                raise DependencyCycleError(self._cycle_node())
            self._unblocked.clear()
            # Poll so an interrupt is noticed while async nodes sleep.
            try:
                await asyncio.wait_for(self._unblocked.wait(), 0.05)
            except TimeoutError:
                pass
            check_interrupt()

    def _is_output(self, node_id: str) -> bool:
        return self._traits(node_id)[1]

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            _, is_output, is_async = self._traits(node_id)
            if is_output or is_async:
                return node_id
        for node_id in ready:
            if any(self._is_output(t) for t in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for target in self.blocking[node_id]:
                if any(self._is_output(t2) for t2 in self.blocking.get(target, ())):
                    return node_id
        return ready[0]

    def unstage_node_execution(self) -> None:
        self.staged_node_id = None

    def complete_node_execution(self) -> None:
        node_id = self.staged_node_id
        assert node_id is not None
        del self.pending[node_id]
        self._ready.pop(node_id, None)
        for target in self.blocking.pop(node_id, {}):
            self._unblock(target)
        self.staged_node_id = None

    def _cycle_node(self) -> str:
        """The id to blame for a runtime cycle: the first ephemeral node left in it, shown by display id."""
        remaining = {n for n in self.pending}
        # Peel off nodes that block nothing still pending: what is left lies on (or feeds into) cycles.
        changed = True
        while changed:
            changed = False
            for node_id in list(remaining):
                if not any(t in remaining for t in self.blocking.get(node_id, ())):
                    remaining.discard(node_id)
                    changed = True
        candidates = [n for n in self.pending if n in remaining] or list(self.pending)
        for node_id in candidates:
            if self.dynprompt.is_ephemeral(node_id):
                return self.dynprompt.get_display_node_id(node_id)
        return self.dynprompt.get_display_node_id(candidates[0])
