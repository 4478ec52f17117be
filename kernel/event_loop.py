"""The server's event loop: uvloop where it is installed, asyncio's own otherwise.

The loop thread parses every request, validates every prompt and writes every WebSocket frame,
competing for the GIL with the executor thread while a graph of quick Python nodes runs.
uvloop does the loop's own work (polling, transports, scheduling) in C, so each turn the loop
thread gets goes further: accepted POST /prompt per second with the executor busy went from
~1,150 to ~1,750 on the 2-core development machine (``bench/executor.py --pack core`` (b)).

Only the server's loop changes; the executor's per-thread loop (where nodes' coroutines run) is
asyncio's own, so node packs see the loop ComfyUI gives them. ``--event-loop asyncio`` turns
uvloop off for the server too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from kernel.errors import StartupError

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` takes for ``choice``; None means asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop; it has no Windows build)"
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop's kind, "uvloop" or "asyncio" (for the startup log line)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
