"""Turns the kernel's prompt lifecycle events into rows of the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished, PromptQueued, PromptsRemoved, PromptStarted
from plugins.history.store import STORE

if TYPE_CHECKING:
    from kernel import Kernel
    from kernel.queue import QueueItem

DEFAULT_USER = "default"


def user_of(extra_data: Any) -> str:
    """POST /prompt copies the Comfy-User header here in multi-user mode."""
    user = extra_data.get("comfy_user") if isinstance(extra_data, dict) else None
    return user if isinstance(user, str) and user else DEFAULT_USER


def history_entry(
    item: QueueItem, status: dict[str, Any], outputs: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    return {"prompt": item.as_list(), "outputs": outputs, "status": status, "meta": meta}


def handle(kernel: Kernel, event: Any) -> None:
    store = kernel.stash.get(STORE, None)
    if store is None:
        return
    if isinstance(event, PromptQueued):
        store.record_queued(event.item.as_list(), user_of(event.item.extra_data))
    elif isinstance(event, PromptStarted):
        store.mark_started(event.prompt_id)
    elif isinstance(event, PromptsRemoved):
        store.remove_pending(event.prompt_ids)
    elif isinstance(event, PromptFinished):
        item = event.item
        entry = history_entry(item, event.status, event.outputs or {}, event.meta or {})
        store.record_finished(item.as_list(), user_of(item.extra_data), entry)
