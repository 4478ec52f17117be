"""ComfyUI's ``execution`` module: the names packs import from the reference's executor.

Packs use it three ways: to validate a prompt they are about to run themselves
(``await execution.validate_prompt(prompt_id, prompt, None)``, answered by the kernel's own
validation), to run a node function the way the executor does (``get_input_data`` /
``get_output_data``, used by packs with their own sub-executors), and to read or wrap class
attributes (``PromptExecutor.handle_execution_error``). The kernel's executor does the real work;
``PromptExecutor`` here runs a prompt on it and waits, for the rare pack that drives one itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from enum import Enum
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel
from server import PromptQueueView as PromptQueue

from kernel.executor.validation import call_mapped
from kernel.executor.validation import validate_prompt as _validate
from kernel.nodes.spec import hidden_token

log = logging.getLogger("comfykernel.compat")

__all__ = [
    "CacheType",
    "ExecutionResult",
    "IsChangedCache",
    "PromptExecutor",
    "PromptQueue",
    "full_type_name",
    "get_input_data",
    "get_output_data",
    "validate_prompt",
]


class ExecutionResult(Enum):
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


class CacheType(Enum):
    CLASSIC = 0
    LRU = 1
    NONE = 2
    RAM_PRESSURE = 3


def full_type_name(klass: type) -> str:
    """``module.QualName`` (just ``QualName`` for builtins), as error reports name exception types."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


async def validate_prompt(
    prompt_id: Any, prompt: dict[str, Any], partial_execution_list: list[str] | None = None
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, output node ids to run, node_errors): the server's own ``/prompt`` validation."""
    result = await _validate(_kernel(), str(prompt_id), prompt, partial_execution_list)
    return result.ok, result.error, list(result.good_outputs), result.node_errors


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def get_input_data(
    inputs: dict[str, Any],
    class_def: type,
    unique_id: str,
    outputs: Any = None,
    dynprompt: Any = None,
    extra_data: dict[str, Any] | None = None,
) -> tuple[dict[str, list[Any]], dict[str, bool], dict[str, Any]]:
    """(input lists for the node function, inputs whose link had no value yet, V3 hidden values).

    ``outputs`` maps a node id to its output lists (a dict, or any object with ``get``); a link
    whose source is not there is "missing" and gets ``(None,)``, as lazy inputs do in the reference.
    """
    extra_data = extra_data or {}
    declared = class_def.INPUT_TYPES()
    hidden = declared.get("hidden", {}) or {}
    # Hidden entries that name no special token are ordinary inputs, as in the reference (loop
    # nodes clone themselves with a hidden literal).
    known = {
        **declared.get("required", {}),
        **declared.get("optional", {}),
        **{name: kind for name, kind in hidden.items() if hidden_token(kind) is None},
    }
    data: dict[str, list[Any]] = {}
    missing: dict[str, bool] = {}
    for name, value in inputs.items():
        raw_link = bool(
            isinstance(known.get(name), tuple | list)
            and len(known[name]) > 1
            and isinstance(known[name][1], dict)
            and known[name][1].get("rawLink")
        )
        if _is_link(value) and not raw_link:
            cached = outputs.get(value[0]) if outputs is not None else None
            if cached is None or value[1] >= len(cached):
                missing[name] = True
                data[name] = [None]
                continue
            data[name] = cached[value[1]]
        elif name in known:
            data[name] = [value]
    for name, declared_kind in hidden.items():
        kind = hidden_token(declared_kind)
        if kind == "PROMPT":
            data[name] = [dynprompt.get_original_prompt() if dynprompt is not None else None]
        elif kind == "DYNPROMPT":
            data[name] = [dynprompt]
        elif kind == "EXTRA_PNGINFO":
            data[name] = [extra_data.get("extra_pnginfo")]
        elif kind == "UNIQUE_ID":
            data[name] = [unique_id]
        elif kind in ("AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
            data[name] = [extra_data.get(kind.lower())]
    return data, missing, {}


async def get_output_data(
    prompt_id: str,
    unique_id: str,
    obj: Any,
    input_data_all: dict[str, list[Any]],
    execution_block_cb: Any = None,
    pre_execute_cb: Any = None,
    v3_data: Any = None,
) -> tuple[list[list[Any]], dict[str, list[Any]], bool, bool]:
    """(outputs as lists, ui dict, has_subgraph, has_pending_tasks) of calling ``obj``'s FUNCTION.

    The function is mapped over the input lists as the executor does (``INPUT_IS_LIST`` honoured);
    expansion results are not followed here (``has_subgraph`` says one was returned).
    """
    function = getattr(obj, obj.FUNCTION)
    results = await call_mapped(function, input_data_all, bool(getattr(obj, "INPUT_IS_LIST", False)))
    values: list[Any] = []
    ui: dict[str, list[Any]] = {}
    has_subgraph = False
    for result in results:
        if isinstance(result, dict):
            for key, value in (result.get("ui") or {}).items():
                ui.setdefault(key, []).extend(value if isinstance(value, list) else [value])
            has_subgraph = has_subgraph or "expand" in result
            result = result.get("result")
        if result is not None:
            values.append(tuple(result))
    count = len(getattr(obj, "RETURN_TYPES", ()) or ())
    if values:
        count = max(count, len(values[0]))
    output: list[list[Any]] = [[] for _ in range(count)]
    for value in values:
        for index, item in enumerate(value[:count]):
            output[index].append(item)
    return output, ui, has_subgraph, False


class IsChangedCache:
    """The reference's per-prompt memo of ``IS_CHANGED`` answers (the kernel keeps its own)."""

    def __init__(self, prompt_id: str, dynprompt: Any, outputs_cache: Any) -> None:
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.outputs_cache = outputs_cache
        self.is_changed: dict[str, Any] = {}

    async def get(self, node_id: str) -> Any:
        return self.is_changed.get(node_id, False)


class PromptExecutor:
    """Runs a prompt on the kernel's executor (queued at the front) and waits for it to finish."""

    def __init__(self, server: Any = None, cache_type: Any = False, cache_args: Any = None) -> None:
        self.server = server
        self.success = True
        self.outputs: dict[str, Any] = {}
        self.history_result: dict[str, Any] = {}
        self.status_messages: list[tuple[str, Any]] = []

    def reset(self) -> None:
        self.success = True
        self.status_messages = []

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        self.status_messages.append((event, data))

    def handle_execution_error(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        current_outputs: Any,
        executed: Any,
        error: dict[str, Any],
        ex: BaseException,
    ) -> None:
        """Record a failed run (the kernel's executor reports errors to clients itself)."""
        self.success = False
        self.add_message("execution_error", {"prompt_id": prompt_id, **error}, broadcast=False)

    def execute(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        execute_outputs: list[str] | None = None,
    ) -> None:
        """Run ``prompt`` to completion. Must not be called from inside a running node (it would wait
        for itself): the kernel runs one prompt at a time."""
        from kernel.progress import get_executing_context

        if get_executing_context() is not None:
            raise RuntimeError("PromptExecutor.execute cannot run a prompt from inside a running node")
        kernel = _kernel()
        try:
            on_server_loop = asyncio.get_running_loop() is kernel.loop
        except RuntimeError:
            on_server_loop = False
        if on_server_loop:
            raise RuntimeError(
                "PromptExecutor.execute blocks; call it from a worker thread, not the server loop"
            )
        done = asyncio.run_coroutine_threadsafe(
            self._run(kernel, prompt, str(prompt_id or uuid.uuid4()), extra_data or {}, execute_outputs),
            kernel.loop,
        )
        self.success = bool(done.result())

    async def _run(
        self, kernel: Any, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any], outputs: Any
    ) -> bool:
        from kernel.events import PromptFinished, PromptQueued
        from kernel.queue import QueueItem

        finished = asyncio.get_running_loop().create_future()

        def watch(event: Any) -> None:
            if (
                isinstance(event, PromptFinished)
                and event.item.prompt_id == prompt_id
                and not finished.done()
            ):
                self.history_result = {"outputs": event.outputs, "meta": event.meta}
                finished.set_result(event.status.get("status_str") == "success")

        unsubscribe = kernel.bus.subscribe(watch)
        try:
            if outputs is None:
                valid, error, outputs, _ = await validate_prompt(prompt_id, prompt, None)
                if not valid:
                    log.warning("PromptExecutor: invalid prompt: %s", error)
                    return False
            item = QueueItem(
                number=kernel.queue.next_number(front=True),
                prompt_id=prompt_id,
                prompt=prompt,
                extra_data=extra_data,
                outputs_to_execute=list(outputs),
            )
            kernel.bus.publish(PromptQueued(item=item))
            kernel.queue.put(item)
            return bool(await finished)
        finally:
            unsubscribe()
