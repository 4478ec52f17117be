"""The executor: a worker thread that takes prompts off the queue and runs them.

The thread owns an asyncio loop, so ``async def`` nodes really overlap, while the server's
own loop stays free for HTTP and WebSocket traffic. Everything the executor reports reaches
the server loop as bus events published thread-safely, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished, PromptStarted, ServerMessage
from kernel.executor.cache import ObjectCache, OutputCache, make_output_cache
from kernel.executor.guards import Limits, MemoryGuard
from kernel.executor.run import PromptRun

if TYPE_CHECKING:
    from kernel.app import Kernel
    from kernel.queue import QueueItem

log = logging.getLogger("comfykernel.executor")

# How often the idle worker wakes to apply /free requests and notice shutdown.
POLL_SECONDS = 0.1
# How long the worker waits for the server loop to deliver a prompt's start / finish events
# (record keepers write them down) before it goes on anyway.
RECORD_WAIT_SECONDS = 10.0


class Executor:
    """Runs prompts from ``kernel.queue``; ``interrupt`` and ``free`` are safe from any thread."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        settings = kernel.settings
        self.cache_mode = settings.cache_mode
        self.outputs: OutputCache = make_output_cache(self.cache_mode, settings.cache_lru, settings.cache_ram)
        self.objects = ObjectCache(enabled=self.cache_mode != "none")
        self.limits = Limits.from_settings(settings)
        self.memory = MemoryGuard(self.limits.max_memory)
        self.current: QueueItem | None = None
        # Display id of the node now executing, replayed to a reconnecting client.
        self.executing_node: str | None = None
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._free_requested = threading.Event()
        self._thread: threading.Thread | None = None
        # The last worker started, kept after a stop that timed out (see thread_alive).
        self._last_thread: threading.Thread | None = None
        # Set by a long-running server (kernel.server.serve_forever): see _settle_heap.
        self.settle_heap_after_first_prompt = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="comfykernel-executor", daemon=True)
        self._last_thread = self._thread
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt whatever runs and wait for the worker to end."""
        self._stop.set()
        self._interrupt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("executor thread did not stop within %.0f s", timeout)
            self._thread = None

    def thread_alive(self) -> bool:
        """Whether a worker thread still runs (a node may ignore interruption past ``stop``)."""
        return self._last_thread is not None and self._last_thread.is_alive()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt; with ``prompt_id`` only if that is the one running."""
        current = self.current
        if prompt_id is not None and (current is None or current.prompt_id != prompt_id):
            return False
        self._interrupt.set()
        return current is not None

    def is_interrupted(self) -> bool:
        return self._interrupt.is_set()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """``POST /free``: with ``free_memory``, drop cached outputs and instances before the next prompt."""
        if free_memory:
            self._free_requested.set()

    def _apply_free(self) -> None:
        if self._free_requested.is_set():
            self._free_requested.clear()
            self.reset_caches()

    def reset_caches(self) -> None:
        self.outputs.clear()
        self.objects.clear()

    def replay(self, sid: str) -> list[tuple[str, Any]]:
        """For a (re)connecting socket: the node executing for its prompt, if any."""
        current, node = self.current, self.executing_node
        if current is not None and node is not None and current.extra_data.get("client_id") == sid:
            return [("executing", {"node": node})]
        return []

    # --- the worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # The reference runs prompts under torch.inference_mode(): pack nodes return tensors that
        # need no .detach() and keep no autograd graph. /free runs here too, inside the same mode.
        with _inference_mode():
            self._serve(loop)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._stop.is_set():
                self._apply_free()
                item = self.kernel.queue.get(timeout=POLL_SECONDS)
                if item is None:
                    continue
                self._apply_free()  # a /free that raced with this prompt's arrival still counts
                try:
                    loop.run_until_complete(self._execute(item))
                except Exception:
                    log.exception("executor failed on prompt %s", item.prompt_id)
                _cancel_leftovers(loop)
                if self.settle_heap_after_first_prompt:
                    self.settle_heap_after_first_prompt = False
                    _settle_heap()
        finally:
            _cancel_leftovers(loop)
            loop.close()
            self._loop = None

    async def _execute(self, item: QueueItem) -> None:
        self.current = item
        self._interrupt.clear()
        bus = self.kernel.bus
        # Recorded before any node runs: if a node takes the process down, the next start knows
        # which prompt was running (history retries it once, behind the others).
        bus.publish_and_wait(PromptStarted(prompt_id=item.prompt_id), RECORD_WAIT_SECONDS)
        run = PromptRun(self, item)
        try:
            await run.run()
        finally:
            self.executing_node = None
            outputs, meta = run.history_result()
            status = {
                "status_str": "success" if run.success else "error",
                "completed": run.success,
                "messages": run.status_messages,
            }
            # Recorded before the next prompt starts: a finished prompt never runs again after a crash.
            bus.publish_and_wait(
                PromptFinished(item=item, status=status, outputs=outputs, meta=meta), RECORD_WAIT_SECONDS
            )
            self.current = None
            self.kernel.queue.task_done(item.prompt_id)
            bus.publish_threadsafe(
                ServerMessage(
                    type="executing", data={"node": None, "prompt_id": item.prompt_id}, sid=run.client_id
                )
            )


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode()`` when torch is installed (a torch-free deployment runs without)."""
    try:
        import torch
    except ImportError:
        return contextlib.nullcontext()
    mode = getattr(torch, "inference_mode", None)  # a stand-in module (tests fake torch) has none
    return mode() if callable(mode) else contextlib.nullcontext()


def _settle_heap() -> None:
    """Move what the process holds after its first prompt to the GC's permanent generation.

    By then the plugins, node classes and the libraries nodes import on first use (torch...) are
    loaded: hundreds of thousands of long-lived objects that every full collection would walk
    again (~0.1 s each, several per long prompt). The first prompt's own garbage is collected
    first; frozen objects are still freed by reference counting when they are let go.
    """
    gc.collect()
    gc.freeze()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks a node left behind must not outlive its prompt (the reference runs one loop per prompt)."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
