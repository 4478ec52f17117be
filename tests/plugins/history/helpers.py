"""Drive the history plugin the way the prompt API and the executor do: through bus events."""

from __future__ import annotations

import uuid
from typing import Any

from kernel import Kernel, hookimpl
from kernel.events import PromptFinished, PromptQueued, PromptStarted
from kernel.queue import QueueItem

GRAPH = {"1": {"class_type": "Dummy", "inputs": {}}}


def make_item(
    number: int | float,
    *,
    prompt_id: str | None = None,
    create_time: int | None = None,
    workflow_id: str | None = None,
    user: str | None = None,
    sensitive: dict[str, Any] | None = None,
) -> QueueItem:
    extra: dict[str, Any] = {}
    if create_time is not None:
        extra["create_time"] = create_time
    if workflow_id is not None:
        extra["extra_pnginfo"] = {"workflow": {"id": workflow_id}}
    if user is not None:
        extra["comfy_user"] = user
    return QueueItem(
        number=number,
        prompt_id=prompt_id or str(uuid.uuid4()),
        prompt=GRAPH,
        extra_data=extra,
        outputs_to_execute=["1"],
        sensitive=sensitive or {},
    )


def status(kind: str, prompt_id: str, start: int = 1000, end: int = 2000, **error: Any) -> dict[str, Any]:
    messages: list[list[Any]] = [["execution_start", {"prompt_id": prompt_id, "timestamp": start}]]
    messages.append(["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": start}])
    if kind == "success":
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": end}])
    elif kind == "error":
        data = {
            "prompt_id": prompt_id,
            "node_id": "1",
            "node_type": "Dummy",
            "executed": [],
            "exception_message": "boom",
            "exception_type": "RuntimeError",
            "traceback": ["line"],
            "current_inputs": {},
            "current_outputs": [],
            "timestamp": end,
            **error,
        }
        messages.append(["execution_error", data])
    else:
        messages.append(
            [
                "execution_interrupted",
                {
                    "prompt_id": prompt_id,
                    "node_id": "1",
                    "node_type": "Dummy",
                    "executed": [],
                    "timestamp": end,
                },
            ]
        )
    return {
        "status_str": "success" if kind == "success" else "error",
        "completed": kind == "success",
        "messages": messages,
    }


IMAGE_OUTPUTS = {"1": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}


def queue(kernel: Kernel, item: QueueItem) -> QueueItem:
    """What POST /prompt does: publish PromptQueued, then put the item on the queue."""
    kernel.bus.publish(PromptQueued(item=item))
    kernel.queue.put(item)
    return item


def run(
    kernel: Kernel,
    item: QueueItem,
    kind: str = "success",
    outputs: dict[str, Any] | None = None,
    start: int = 1000,
    end: int = 2000,
) -> None:
    """What the executor does for one prompt, from taking it off the queue to task_done."""
    kernel.queue.delete([item.prompt_id])
    kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))
    kernel.bus.publish(
        PromptFinished(
            item=item,
            status=status(kind, item.prompt_id, start, end),
            outputs=IMAGE_OUTPUTS if outputs is None else outputs,
            meta={"1": {"node_id": "1", "display_node": "1", "parent_node": None, "real_node_id": "1"}},
        )
    )


def finish(kernel: Kernel, item: QueueItem, kind: str = "success", **kw: Any) -> QueueItem:
    queue(kernel, item)
    run(kernel, item, kind, **kw)
    return item


class IdleExecutor:
    """Stands in for the engine: never takes prompts, so the test alone moves them along."""

    def __init__(self) -> None:
        self.interrupted: list[str | None] = []
        self.running: str | None = None

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 0) -> None:
        pass

    def replay(self, sid: str) -> list[Any]:
        return []

    def free(self, unload_models: bool, free_memory: bool) -> None:
        pass

    def interrupt(self, prompt_id: str | None = None) -> bool:
        self.interrupted.append(prompt_id)
        return True


class _IdlePlugin:
    @hookimpl(trylast=True)
    def configure(self, kernel: Kernel) -> None:
        kernel.executor = IdleExecutor()


async def start_quiet(comfy_server: Any, **settings: Any) -> Any:
    """A server whose executor never runs anything: the tests publish the engine's events."""
    plugins = list(settings.pop("plugins", ["history"]))
    return await comfy_server(plugins=[*plugins, ("idle_executor", _IdlePlugin())], **settings)
