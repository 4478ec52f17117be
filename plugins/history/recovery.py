"""Startup recovery: what the previous process accepted but never finished runs again.

Pending prompts go back on the queue with their number and prompt_id, so the queue's own
ordering puts them back in their original order. A prompt that was running when the process
died (a clean shutdown records it as pending again) may be what killed it: it is retried while
it has attempts left (by default once), queued behind the prompts that were waiting so they run
whatever it does, and otherwise recorded as failed, through the same ``PromptFinished`` event
the executor publishes (so every record keeper sees it). Rows already recorded as finished are
never touched: nothing finished runs twice.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from kernel.events import PromptFinished
from kernel.queue import QueueItem
from plugins.history.store import PENDING, HistoryStore, Unfinished

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.history")

CRASH_EXCEPTION_TYPE = "ServerRestartedError"


class RecoveryReport(msgspec.Struct):
    requeued: list[str] = msgspec.field(default_factory=list)
    failed: list[str] = msgspec.field(default_factory=list)


def recover(kernel: Kernel, store: HistoryStore, max_attempts: int) -> RecoveryReport:
    report = RecoveryReport()
    highest: float | None = None
    rows = [
        row
        for row in store.unfinished()
        if not (kernel.queue.is_pending(row.prompt_id) or kernel.queue.is_running(row.prompt_id))
    ]
    # Waiting prompts first, with their numbers; then the crashed ones, numbered behind them.
    for row in sorted(rows, key=lambda r: r.state != PENDING):
        item = _queue_item(row.item)
        if row.state == PENDING:
            kernel.queue.put(item)
        elif row.attempts < max_attempts:
            if highest is not None and not item.number > highest:
                item.number = math.floor(highest) + 1
            kernel.queue.put(item)
            store.mark_requeued(item.prompt_id, item.as_list())
        else:
            kernel.bus.publish(_failed(item, row, max_attempts))
            report.failed.append(item.prompt_id)
            continue
        report.requeued.append(item.prompt_id)
        if isinstance(item.number, (int, float)) and math.isfinite(item.number):
            highest = item.number if highest is None else max(highest, item.number)
    if highest is not None:
        _catch_up_counter(kernel, highest)
    if report.requeued or report.failed:
        log.info(
            "history: re-queued %d unfinished prompt(s), marked %d failed after %d attempt(s)",
            len(report.requeued),
            len(report.failed),
            max_attempts,
        )
    return report


def _queue_item(item_list: list[Any]) -> QueueItem:
    number, prompt_id, prompt, extra_data, outputs_to_execute = item_list
    return QueueItem(
        number=number,
        prompt_id=prompt_id,
        prompt=prompt,
        extra_data=extra_data or {},
        outputs_to_execute=outputs_to_execute or [],
    )


def _failed(item: QueueItem, row: Unfinished, max_attempts: int) -> PromptFinished:
    message = (
        f"The server stopped while this prompt was running, on attempt {row.attempts} of {max_attempts}"
        " (the process died: the prompt may be what killed it); it was not run again."
    )
    error = {
        "prompt_id": item.prompt_id,
        "node_id": None,
        "node_type": None,
        "executed": [],
        "exception_message": message,
        "exception_type": CRASH_EXCEPTION_TYPE,
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": int(time.time() * 1000),
    }
    status = {"status_str": "error", "completed": False, "messages": [["execution_error", error]]}
    return PromptFinished(item=item, status=status, outputs={}, meta={})


def _catch_up_counter(kernel: Kernel, highest: float) -> None:
    """The counter restarts at 0 with the process; move it past the recovered prompts so prompts
    submitted after the restart queue behind them, as they would have without the restart."""
    if highest >= 0:
        kernel.queue.advance_counter(highest)
