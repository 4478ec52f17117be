"""/prompt, /queue, /interrupt and /free: how prompts enter and leave the queue."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from kernel.accept import Accepted, accept
from kernel.app import KERNEL_KEY
from kernel.events import PromptsRemoved
from kernel.executor.validation import make_error, validate_prompt
from kernel.identity import may_access, owner_of, principal_of
from kernel.queue import QueueItem

if TYPE_CHECKING:
    from kernel.app import Kernel

log = logging.getLogger("comfykernel.prompt")
routes = web.RouteTableDef()

# extra_data keys that are secrets: kept with the queue item but never listed or stored.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

_NO_BODY = object()
_DECODER = msgspec.json.Decoder()


async def _json_body(request: web.Request) -> Any:
    """The parsed body; ``_NO_BODY`` when it is empty; raises ``ValueError`` when it is not JSON."""
    raw = await request.read()
    if not raw.strip():
        return _NO_BODY
    try:
        # msgspec parses the common case several times faster than json; what it refuses
        # (NaN, 1e400, a BOM, lone surrogates, UTF-16...) goes to json, so the result is json's.
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _prompt_error(error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> web.Response:
    return _json({"error": error, "node_errors": node_errors or {}}, status=400)


# Seconds a client is asked to wait when the queue is full: a few prompts' worth of work.
QUEUE_FULL_RETRY_AFTER = 5


def _queue_full(limit: int) -> web.Response:
    # Checked before the body is read: shedding load must stay cheap under load.
    message = f"The queue is full ({limit} prompts); retry later"
    response = _json({"error": make_error("queue_full", message, message), "node_errors": {}}, status=503)
    response.headers["Retry-After"] = str(QUEUE_FULL_RETRY_AFTER)
    return response


# Random bytes for new prompt ids, read from the OS 256 ids at a time: uuid4() reads 16 bytes
# per call, a system call that releases the GIL and, with the executor thread running, costs
# the request a wait to get it back. Same source and quality as uuid4(), fewer calls.
_ID_BATCH = 256
_id_bytes: list[bytes] = []
os.register_at_fork(after_in_child=_id_bytes.clear)  # a forked child must not reuse the parent's


def _new_prompt_id() -> str:
    try:
        raw = _id_bytes.pop()
    except IndexError:
        block = os.urandom(16 * _ID_BATCH)
        _id_bytes.extend(block[i : i + 16] for i in range(0, len(block), 16))
        raw = _id_bytes.pop()
    return str(uuid.UUID(bytes=raw, version=4))


def _is_canonical_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    return _json({"exec_info": {"queue_remaining": kernel.queue.remaining()}})


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    if kernel.queue.remaining() >= kernel.settings.max_queue_size:
        return _queue_full(kernel.settings.max_queue_size)
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _prompt_error(make_error("invalid_prompt", "Invalid JSON body", str(exc)))
    if not isinstance(body, dict):
        return _prompt_error(make_error("invalid_prompt", "The request body must be a JSON object", ""))
    body = kernel.hooks.on_prompt(kernel, body)

    # The number is taken before validation, so a rejected prompt still uses up a counter value.
    if "number" in body:
        try:
            number: float | int = float(body["number"])
        except (TypeError, ValueError):
            return _prompt_error(
                make_error("invalid_prompt", "number must be a number", repr(body["number"]))
            )
        if not math.isfinite(number):
            # NaN compares false with everything and would break the queue's heap order.
            return _prompt_error(
                make_error("invalid_prompt", "number must be a finite number", repr(body["number"]))
            )
    else:
        number = kernel.queue.next_number(bool(body.get("front")))

    if "prompt" not in body:
        return _prompt_error(make_error("no_prompt", "No prompt provided", "No prompt provided"))
    prompt_id = body.get("prompt_id")
    if prompt_id is None:
        prompt_id = _new_prompt_id()
    elif not _is_canonical_uuid(prompt_id):
        return _prompt_error(
            make_error(
                "invalid_prompt_id", "prompt_id must be a valid UUID", f"Invalid prompt_id: {prompt_id}"
            )
        )
    extra_data = body.get("extra_data", {})
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        return _prompt_error(make_error("invalid_prompt", "extra_data must be an object", ""))
    targets = body.get("partial_execution_targets")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        return _prompt_error(
            make_error(
                "invalid_prompt", "partial_execution_targets must be a list of node ids", repr(targets)
            )
        )

    prompt = body["prompt"]
    result = await validate_prompt(kernel, prompt_id, prompt, targets)
    if not result.ok:
        log.warning("invalid prompt: %s", result.error)
        return _prompt_error(result.error or {}, result.node_errors)

    if kernel.queue.is_pending(prompt_id) or kernel.queue.is_running(prompt_id):
        # Two live items with one id would collide in the heap (a 500) and in the running set.
        # accept() checks again within its group, so concurrent posts cannot both pass.
        return _duplicate(prompt_id)
    _fill_extra_data(kernel, request, body, extra_data)
    item = QueueItem(
        number=number,
        prompt_id=prompt_id,
        prompt=prompt,
        extra_data=extra_data,
        outputs_to_execute=result.good_outputs,
        sensitive={k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data},
    )
    # Recorded (history) and queued with the other prompts accepted in this loop turn, before
    # the answer: a 200 means the prompt is durable.
    outcome = await accept(kernel, item)
    if outcome is Accepted.DUPLICATE:
        return _duplicate(prompt_id)
    if outcome is Accepted.UNRECORDED:
        message = "The prompt could not be recorded; retry later"
        return _json({"error": make_error("not_recorded", message, message), "node_errors": {}}, status=503)
    return _json({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})


def _duplicate(prompt_id: str) -> web.Response:
    return _prompt_error(
        make_error(
            "invalid_prompt_id", "prompt_id is already queued or running", f"Duplicate prompt_id: {prompt_id}"
        )
    )


def _fill_extra_data(
    kernel: Kernel, request: web.Request, body: dict[str, Any], extra_data: dict[str, Any]
) -> None:
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    usage_source = request.headers.get("Comfy-Usage-Source")
    if usage_source is not None and "comfy_usage_source" not in extra_data:
        extra_data["comfy_usage_source"] = usage_source
    principal = principal_of(request)
    if principal is not None:
        # An authenticated caller owns what it queues, whatever the body or headers say.
        extra_data["comfy_user"] = principal.user
    elif kernel.settings.multi_user:
        # The history plugin files prompts per user from this.
        extra_data["comfy_user"] = request.headers.get("Comfy-User", "default")
    extra_data["create_time"] = int(time.time() * 1000)


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = request.app[KERNEL_KEY].queue.snapshot()
    # With an authenticated principal, only the prompts it may see (identify hook).
    principal = principal_of(request)
    return _json(
        {
            "queue_running": [item.as_list() for item in running if may_access(principal, item.extra_data)],
            "queue_pending": [item.as_list() for item in pending if may_access(principal, item.extra_data)],
        }
    )


def _own_pending(kernel: Kernel, request: web.Request, prompt_ids: list[str] | None) -> list[str] | None:
    """The pending ids (all, or those of ``prompt_ids``) the request may remove; None = no limit."""
    principal = principal_of(request)
    if principal is None or principal.admin:
        return None
    _, pending = kernel.queue.snapshot()
    wanted = None if prompt_ids is None else set(prompt_ids)
    return [
        item.prompt_id
        for item in pending
        if (wanted is None or item.prompt_id in wanted) and principal.may_access(owner_of(item.extra_data))
    ]


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _json({"error": f"Invalid JSON body: {exc}"}, status=400)
    if body is _NO_BODY:
        body = {}
    if not isinstance(body, dict):
        return _json({"error": "The request body must be a JSON object"}, status=400)
    to_delete = body.get("delete")
    if to_delete is not None and not (
        isinstance(to_delete, list) and all(isinstance(i, str) for i in to_delete)
    ):
        return _json({"error": "delete must be a list of prompt ids"}, status=400)
    removed: list[str] = []
    if body.get("clear"):
        own = _own_pending(kernel, request, None)
        removed.extend(kernel.queue.clear() if own is None else kernel.queue.delete(own))
    if to_delete:
        own = _own_pending(kernel, request, to_delete)
        removed.extend(kernel.queue.delete(to_delete if own is None else own))
    if removed:
        kernel.bus.publish(PromptsRemoved(prompt_ids=removed))
    return web.Response(status=200)


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    try:
        body = await _json_body(request)
    except ValueError:
        body = {}  # the reference treats a bad body as "interrupt whatever runs"
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if kernel.executor is None:
        return web.Response(status=200)
    principal = principal_of(request)
    if principal is not None and not principal.admin:
        # A user stops only their own prompts; someone else's is a no-op like an unknown id.
        running, _ = kernel.queue.snapshot()
        for item in running:
            if (not prompt_id or item.prompt_id == prompt_id) and principal.may_access(
                owner_of(item.extra_data)
            ):
                kernel.executor.interrupt(item.prompt_id)
        return web.Response(status=200)
    if not prompt_id:
        kernel.executor.interrupt(None)
    elif isinstance(prompt_id, str):
        kernel.executor.interrupt(prompt_id)
    # Any other prompt_id names no running prompt: a no-op, as in the reference.
    return web.Response(status=200)


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    kernel = request.app[KERNEL_KEY]
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _json({"error": f"Invalid JSON body: {exc}"}, status=400)
    if not isinstance(body, dict):
        body = {}
    kernel.hooks.on_free(kernel, bool(body.get("unload_models", False)), bool(body.get("free_memory", False)))
    return web.Response(status=200)
