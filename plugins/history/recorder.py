"""Turns the kernel's prompt lifecycle events into rows of the store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished, PromptQueued, PromptsRemoved, PromptStarted
from plugins.history.store import STORE

if TYPE_CHECKING:
    from kernel import Kernel
    from kernel.queue import QueueItem

log = logging.getLogger("comfykernel.history")

DEFAULT_USER = "default"


def user_of(extra_data: Any) -> str:
    """POST /prompt copies the Comfy-User header here in multi-user mode."""
    user = extra_data.get("comfy_user") if isinstance(extra_data, dict) else None
    return user if isinstance(user, str) and user else DEFAULT_USER


def history_entry(
    item: QueueItem, status: dict[str, Any], outputs: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    return {"prompt": item.as_list(), "outputs": outputs, "status": status, "meta": meta}


def shutdown_begins(kernel: Kernel) -> None:
    store = kernel.stash.get(STORE, None)
    if store is not None:
        store.closing = True


def shutdown_ends(kernel: Kernel) -> None:
    """Before the store closes: a prompt the executor could not stop in time (a node that never
    checks for interruption) is still a shutdown's victim, not a crash's, so it runs again after
    the restart like any prompt the shutdown interrupted."""
    store = kernel.stash.get(STORE, None)
    executor = kernel.executor
    if store is None or store.closed or not store.closing or executor is None:
        return
    item = getattr(executor, "current", None)
    if item is not None and executor.thread_alive():
        log.info("history: prompt %s was still running at shutdown; it will run again", item.prompt_id)
        store.unstart(item.prompt_id)


def _interrupted(status: dict[str, Any]) -> bool:
    return any(
        isinstance(m, list) and m and m[0] == "execution_interrupted" for m in status.get("messages") or ()
    )


def handle(kernel: Kernel, event: Any) -> None:
    store = kernel.stash.get(STORE, None)
    if store is None or store.closed:
        return
    if isinstance(event, PromptQueued):
        store.record_queued(event.item.as_list(), user_of(event.item.extra_data))
    elif isinstance(event, PromptStarted):
        store.mark_started(event.prompt_id)
    elif isinstance(event, PromptsRemoved):
        store.remove_pending(event.prompt_ids)
    elif isinstance(event, PromptFinished):
        item = event.item
        if store.closing and _interrupted(event.status or {}):
            # Stopping the server interrupted it: run it again after the restart instead of
            # recording a cancellation nobody asked for.
            log.info("history: prompt %s was interrupted by shutdown; it will run again", item.prompt_id)
            store.unstart(item.prompt_id)
            return
        entry = history_entry(item, event.status, event.outputs or {}, event.meta or {})
        store.record_finished(item.as_list(), user_of(item.extra_data), entry)
