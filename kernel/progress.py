"""Progress, previews and interruption for node authors.

Inside a node's function (sync or ``async``)::

    from kernel.progress import ProgressBar

    def run(self, steps):
        bar = ProgressBar(steps)
        for i in range(steps):
            ...                      # one step of work
            bar.update(1)            # -> "progress" + "progress_state" to the prompt's client
        return (result,)

``update_absolute(value, total, preview=img)`` also sends a preview frame (a PIL image, an
``(format, image, max_size)`` tuple, or an ``[H, W, C]`` / ``[B, H, W, C]`` float tensor).
Every update raises :class:`Interrupted` once the prompt was interrupted, which stops the node
cooperatively. Outside a node call (no executing context) the calls only check nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol


class Interrupted(Exception):
    """The running prompt was interrupted (``POST /interrupt``); raised at the next check."""


class ProgressSink(Protocol):
    def update(self, node_id: str, value: float, max_value: float, preview: Any = None) -> None: ...

    def is_interrupted(self) -> bool: ...


@dataclass(frozen=True)
class ExecutionContext:
    """Which prompt, node and list index the current code runs for."""

    prompt_id: str
    node_id: str
    list_index: int | None
    sink: ProgressSink


# A ContextVar, not a global: each node call (and each async task it starts) sees its own.
_CURRENT: ContextVar[ExecutionContext | None] = ContextVar("comfykernel_executing", default=None)


def get_executing_context() -> ExecutionContext | None:
    """The context of the node call running in this thread or task, or None."""
    return _CURRENT.get()


@contextlib.contextmanager
def executing(context: ExecutionContext) -> Iterator[None]:
    """Used by the executor around every node call."""
    token = _CURRENT.set(context)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def throw_if_interrupted() -> None:
    """Raise :class:`Interrupted` if the running prompt was interrupted."""
    context = _CURRENT.get()
    if context is not None and context.sink.is_interrupted():
        raise Interrupted("Processing interrupted")


def set_progress(
    value: float, max_value: float, node_id: str | None = None, preview_image: Any = None
) -> None:
    """Report ``value`` of ``max_value`` for ``node_id`` (default: the executing node)."""
    context = _CURRENT.get()
    if context is None:
        return
    if context.sink.is_interrupted():
        raise Interrupted("Processing interrupted")
    context.sink.update(node_id or context.node_id, value, max_value, preview_image)


class ProgressBar:
    """A counter that reports to the prompt's client as it advances."""

    def __init__(self, total: float, node_id: str | None = None) -> None:
        self.total = total
        self.current: float = 0
        context = _CURRENT.get()
        self.node_id = node_id or (context.node_id if context is not None else None)

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total) if self.total else value
        set_progress(self.current, self.total, self.node_id, preview)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)


__all__ = [
    "ExecutionContext",
    "Interrupted",
    "ProgressBar",
    "ProgressSink",
    "executing",
    "get_executing_context",
    "set_progress",
    "throw_if_interrupted",
]
