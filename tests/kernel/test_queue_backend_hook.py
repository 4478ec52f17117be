"""The queue-backend seam: a plugin's ``provide_queue_backend`` answer becomes ``kernel.queue``."""

from __future__ import annotations

from typing import Any

from kernel import hookimpl
from kernel.queue import PromptQueue, QueueItem
from tests.kernel.exec_helpers import EXEC_PACK, collect, connect, submit


class RecordingQueue(PromptQueue):
    """The in-process queue, noting every prompt id it was handed."""

    def __init__(self, on_change: Any) -> None:
        super().__init__(on_change=on_change)
        self.put_ids: list[str] = []

    def put(self, item: QueueItem) -> None:
        self.put_ids.append(item.prompt_id)
        super().put(item)


class ProvidesQueue:
    __name__ = "provides_queue"

    @staticmethod
    @hookimpl
    def provide_queue_backend(kernel: Any) -> RecordingQueue:
        return RecordingQueue(on_change=kernel._queue_changed)


class Declines:
    __name__ = "declines"

    @staticmethod
    @hookimpl
    def provide_queue_backend(kernel: Any) -> None:
        return None


async def test_hook_provide_queue_backend(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[EXEC_PACK, ProvidesQueue, Declines])
    queue = server.kernel.queue
    assert isinstance(queue, RecordingQueue)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 7}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    prompt_id = await submit(server, prompt, client_id)
    frames = await collect(ws, prompt_id)
    executed = [f for f in frames if isinstance(f, dict) and f["type"] == "executed"]
    assert executed and executed[0]["data"]["output"] == {"values": [7]}
    # The executor took the prompt from the provided backend.
    assert queue.put_ids == [prompt_id]
    assert queue.remaining() == 0
    await ws.close()


def test_no_provider_keeps_the_in_process_queue(make_kernel: Any) -> None:
    kernel = make_kernel(plugins=[Declines])
    assert type(kernel.queue) is PromptQueue
