"""Which server the node now executing belongs to, for code that is not handed the kernel.

The loader nodes call the model-stack adapters with file paths only; the adapters still need
the server's model manager (its cache and devices). The core_nodes plugin wraps every node call
in :func:`serving`, so :func:`current_kernel` answers inside a node and None elsewhere (direct
calls from tests or benchmarks). A ContextVar, not a global: two servers in one process, or two
threads, each see their own. torch-free, like everything the plugin imports at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel import Kernel

_KERNEL: ContextVar[Kernel | None] = ContextVar("core_nodes_kernel", default=None)


def current_kernel() -> Kernel | None:
    """The kernel whose node is executing in this thread or task, or None."""
    return _KERNEL.get()


@contextlib.contextmanager
def serving(kernel: Kernel) -> Iterator[None]:
    token = _KERNEL.set(kernel)
    try:
        yield
    finally:
        _KERNEL.reset(token)
