"""Limits that stop a runaway prompt before it takes the server down.

A graph that keeps expanding (a loop node cloning itself without end) grows the live graph, the
cache and the process without bound. Three limits end such a prompt with an ``execution_error``
that names the limit and the flag that raises it, and the server goes on serving:

* nodes per prompt, the expanded ones included (``--max-prompt-nodes``);
* expansion depth, how many expansions deep a node was created (``--max-expansion-depth``);
* the process's resident memory (``--max-memory``, default a fraction of the machine's RAM),
  checked between nodes and whenever a node reports progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel.settings import Settings

DEFAULT_MAX_PROMPT_NODES = 100_000
DEFAULT_MAX_EXPANSION_DEPTH = 1_000
# A prompt that starts over the ceiling may still grow this much before it is stopped.
PROMPT_GROWTH_ALLOWANCE = 64 * 1024 * 1024
# The default memory ceiling: this share of the machine's RAM.
DEFAULT_MEMORY_FRACTION = 0.8
# RSS is read at most this often (a read costs a system call; nodes can be far faster).
MEMORY_CHECK_INTERVAL = 0.005

GIB = 1024**3


class PromptLimitExceeded(Exception):
    """The running prompt crossed a configured limit; the message names it and its flag."""


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_depth: int
    max_memory: int | None  # bytes of RSS; None = no ceiling

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_nodes=settings.max_prompt_nodes,
            max_depth=settings.max_expansion_depth,
            max_memory=memory_ceiling(settings.max_memory),
        )

    def check_nodes(self, count: int) -> None:
        if count > self.max_nodes:
            raise PromptLimitExceeded(
                f"The prompt grew to {count} nodes with its expansions, more than the limit of "
                f"{self.max_nodes} nodes per prompt (raise it with --max-prompt-nodes)"
            )

    def check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise PromptLimitExceeded(
                f"Graph expansion nested {depth} levels deep, more than the limit of {self.max_depth}"
                " (raise it with --max-expansion-depth)"
            )


def memory_ceiling(gigabytes: float | None) -> int | None:
    """``--max-memory`` in bytes: None (no flag) = the default share of RAM, 0 = no ceiling."""
    if gigabytes is None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a dependency
            return None
        return int(psutil.virtual_memory().total * DEFAULT_MEMORY_FRACTION)
    if gigabytes <= 0:
        return None
    return int(gigabytes * GIB)


class MemoryGuard:
    """Raises once the process's RSS is over the ceiling (reads throttled to one per interval)."""

    def __init__(self, ceiling: int | None) -> None:
        self.ceiling = ceiling
        self._next_check = 0.0
        self._process = None
        # What the process held when the running prompt began: a prompt is stopped for what it
        # adds, so memory the allocator keeps after an earlier stop cannot fail every later one.
        self._baseline = 0
        if ceiling is not None:
            import psutil

            self._process = psutil.Process()

    def rss(self) -> int:
        return int(self._process.memory_info().rss) if self._process is not None else 0

    def begin_prompt(self) -> None:
        """Called as a prompt starts: over the ceiling already (what an earlier prompt freed is
        still mapped), hand freed memory back to the OS first, then take the baseline."""
        if self.ceiling is None:
            return
        if self.rss() > self.ceiling:
            release_freed_memory()
        self._baseline = self.rss()
        self._next_check = 0.0

    def check(self, force: bool = False) -> None:
        if self.ceiling is None:
            return
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + MEMORY_CHECK_INTERVAL
        rss = self.rss()
        if rss > self.ceiling and rss > self._baseline + PROMPT_GROWTH_ALLOWANCE:
            raise PromptLimitExceeded(
                f"The server's memory use reached {rss / GIB:.2f} GiB, over the ceiling of "
                f"{self.ceiling / GIB:.2f} GiB (raise it with --max-memory)"
            )


def release_freed_memory() -> None:
    """Collect garbage and ask glibc to return freed heap pages (a no-op where there is no glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
