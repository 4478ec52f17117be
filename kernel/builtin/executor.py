"""Essential plugin ``executor``: the worker thread that runs queued prompts.

``configure`` puts an :class:`kernel.executor.engine.Executor` on ``kernel.executor``; the
thread starts with the server and stops (interrupting the running prompt) when it shuts down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel import hookimpl
from kernel.builtin.ws import RECONNECT_REPLAY
from kernel.executor.engine import Executor

if TYPE_CHECKING:
    from aiohttp import web

    from kernel.app import Kernel


@hookimpl
def configure(kernel: Kernel) -> None:
    kernel.executor = Executor(kernel)


@hookimpl
def startup(kernel: Kernel, app: web.Application) -> None:
    # Registered here, not in configure: the ws plugin creates the list during its configure.
    kernel.stash.setdefault(RECONNECT_REPLAY, []).append(kernel.executor.replay)
    kernel.executor.start()


# How long shutdown waits for the running prompt to notice its interruption. A node that never
# checks (one long native call) is left behind; the CLI then leaves without waiting for it.
STOP_WAIT_SECONDS = 1.5


@hookimpl
async def shutdown(kernel: Kernel) -> None:
    import asyncio

    # join() blocks; keep the server loop free to deliver the last messages meanwhile.
    await asyncio.get_running_loop().run_in_executor(None, kernel.executor.stop, STOP_WAIT_SECONDS)


@hookimpl
def on_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
    kernel.executor.free(unload_models, free_memory)
