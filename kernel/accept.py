"""Accepting validated prompts in groups: one durable record per group of waiting requests.

``POST /prompt`` validates each prompt on its own, then hands the queue item to
:func:`accept` and waits. Items handed over during one turn of the event loop form a group:
``PromptQueued`` is published for each of them inside the record keepers' *accept scopes*
(the history plugin's is one SQLite transaction), the scopes close (the transaction commits),
and only then do the items go on the queue and their requests get their answer. So a 200 still
means the prompt survives kill -9, but a burst of requests shares one commit instead of paying
one each.

A record keeper registers a scope factory::

    kernel.stash.setdefault(ACCEPT_SCOPES, []).append(store.transaction)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from kernel.events import PromptQueued
from kernel.stash import StashKey

if TYPE_CHECKING:
    from kernel.app import Kernel
    from kernel.queue import QueueItem

log = logging.getLogger("comfykernel.prompt")

# Context-manager factories entered around the publication of one group's PromptQueued events.
ACCEPT_SCOPES = StashKey[list[Callable[[], contextlib.AbstractContextManager[object]]]]()


class Accepted(Enum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"  # its prompt_id is queued or running (or came twice in one group)
    UNRECORDED = "unrecorded"  # a record keeper failed to write the group down; nothing queued


class AcceptBatcher:
    """Collects the items handed over during one loop turn and accepts them together."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._group: list[tuple[QueueItem, asyncio.Future[Accepted]]] = []
        self._scheduled = False

    async def accept(self, item: QueueItem) -> Accepted:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._group.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            # After the callbacks already due: the other requests ready in this turn join.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        group, self._group, self._scheduled = self._group, [], False
        queue = self.kernel.queue
        taken: set[str] = set()
        accepted: list[tuple[QueueItem, asyncio.Future[Accepted]]] = []
        for item, future in group:
            if future.done():  # the client went away before its prompt was accepted
                continue
            prompt_id = item.prompt_id
            if prompt_id in taken or queue.is_pending(prompt_id) or queue.is_running(prompt_id):
                future.set_result(Accepted.DUPLICATE)
                continue
            taken.add(prompt_id)
            accepted.append((item, future))
        if not accepted:
            return
        try:
            with contextlib.ExitStack() as scopes:
                for scope in self.kernel.stash.get(ACCEPT_SCOPES, ()):
                    scopes.enter_context(scope())
                for item, _ in accepted:
                    self.kernel.bus.publish(PromptQueued(item=item))
        except Exception:
            log.exception("could not record %d accepted prompt(s); none was queued", len(accepted))
            for _, future in accepted:
                future.set_result(Accepted.UNRECORDED)
            return
        put_many = getattr(queue, "put_many", None)  # optional for other backends
        if put_many is not None:
            put_many([item for item, _ in accepted])
        else:
            for item, _ in accepted:
                queue.put(item)
        for _, future in accepted:
            future.set_result(Accepted.QUEUED)


_BATCHER = StashKey[AcceptBatcher]()


async def accept(kernel: Kernel, item: QueueItem) -> Accepted:
    """Record and queue ``item`` with the other prompts accepted in this loop turn."""
    batcher = kernel.stash.get(_BATCHER, None)
    if batcher is None:
        batcher = kernel.stash[_BATCHER] = AcceptBatcher(kernel)
    return await batcher.accept(item)
