"""Accepted prompts are recorded in groups: one scope (history: one transaction) per group."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from kernel import hookimpl
from kernel.accept import ACCEPT_SCOPES, Accepted, accept
from kernel.events import PromptQueued
from kernel.queue import QueueItem
from tests.kernel.exec_helpers import EXEC_PACK


class Recorder:
    """A record keeper: notes each group (scope) and the prompts published inside it."""

    def __init__(self, fail: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.outside: list[str] = []
        self.fail = fail
        self._open: list[str] | None = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self._open = []
        try:
            yield
            if self.fail:
                raise OSError("disk full")
            self.groups.append(self._open)
        finally:
            self._open = None

    @hookimpl
    def configure(self, kernel: Any) -> None:
        kernel.stash.setdefault(ACCEPT_SCOPES, []).append(self.scope)

    @hookimpl
    def on_event(self, kernel: Any, event: Any) -> None:
        if isinstance(event, PromptQueued):
            (self._open if self._open is not None else self.outside).append(event.item.prompt_id)


def item(prompt_id: str | None = None) -> QueueItem:
    return QueueItem(number=1, prompt_id=prompt_id or str(uuid.uuid4()), prompt={}, outputs_to_execute=[])


async def test_items_handed_over_in_one_loop_turn_share_one_scope(comfy_server: Any) -> None:
    recorder = Recorder()
    server = await comfy_server(plugins=[("recorder", recorder)])
    kernel = server.kernel
    kernel.executor.stop()  # keep everything on the queue
    items = [item() for _ in range(5)]
    twin = item(items[0].prompt_id)
    outcomes = await asyncio.gather(*(accept(kernel, i) for i in [*items, twin]))
    assert outcomes == [Accepted.QUEUED] * 5 + [Accepted.DUPLICATE]
    assert recorder.groups == [[i.prompt_id for i in items]] and recorder.outside == []
    assert [i.prompt_id for i in sorted(kernel.queue.snapshot()[1], key=QueueItem.sort_key)] == sorted(
        i.prompt_id for i in items
    )
    # A later turn is a new group; an id already queued is still a duplicate.
    assert await accept(kernel, items[1]) is Accepted.DUPLICATE
    assert await accept(kernel, item()) is Accepted.QUEUED
    assert len(recorder.groups) == 2


async def test_a_group_that_cannot_be_recorded_is_not_queued(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[EXEC_PACK, ("recorder", Recorder(fail=True))])
    server.kernel.executor.stop()
    prompt = {"1": {"class_type": "ExecShow", "inputs": {"value": 1}}}
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 503 and body["error"]["type"] == "not_recorded"
    assert server.kernel.queue.snapshot() == ([], [])


async def test_concurrent_posts_are_each_recorded_once_inside_a_group(comfy_server: Any) -> None:
    recorder = Recorder()
    server = await comfy_server(plugins=[EXEC_PACK, ("recorder", recorder)])
    server.kernel.executor.stop()
    prompt = {"1": {"class_type": "ExecShow", "inputs": {"value": 1}}}
    answers = await asyncio.gather(
        *(server.json("POST", "/prompt", json={"prompt": prompt}) for _ in range(40))
    )
    ids = [body["prompt_id"] for status, body in answers if status == 200]
    assert len(ids) == 40
    grouped = [pid for group in recorder.groups for pid in group]
    assert sorted(grouped) == sorted(ids) and recorder.outside == []
