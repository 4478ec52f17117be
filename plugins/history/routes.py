"""``/history*`` (served at ``/history`` and ``/api/history``) and ``/api/jobs*`` (only there)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from kernel import KERNEL_KEY, Kernel
from kernel.events import PromptsRemoved
from kernel.identity import principal_of
from plugins.history import jobs
from plugins.history.recorder import DEFAULT_USER, user_of
from plugins.history.store import DONE, STORE, HistoryStore, decode

routes = web.RouteTableDef()

_SORT_KEYS = ("created_at", "execution_duration")
_SORT_ORDERS = ("asc", "desc")


class BadRequest(Exception):
    """A query or body the route refuses with 400 and the reference's ``{"error": ...}`` body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.body = body


def _raw_json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


def _error(message: str, status: int = 400, **extra: Any) -> web.Response:
    return _raw_json({"error": message, **extra}, status=status)


def _kernel_store(request: web.Request) -> tuple[Kernel, HistoryStore]:
    kernel = request.app[KERNEL_KEY]
    return kernel, kernel.stash[STORE]


def _request_user(request: web.Request) -> str | None:
    """The user whose records this request sees; None = everyone's (single-user servers, admins)."""
    principal = principal_of(request)
    if principal is not None:  # authenticated (the identify hook): the header is not trusted
        return None if principal.admin else principal.user
    kernel = request.app[KERNEL_KEY]
    if not kernel.settings.multi_user:
        return None
    return request.headers.get("Comfy-User") or DEFAULT_USER


# SQLite integers are 64-bit (a larger LIMIT overflows into a 500); past 2**53, JavaScript's safe
# range, no page differs anyway, and offset + limit still fits.
_INT_PARAM_BOUND = 2**53


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.rel_url.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest({"error": f"{name} must be an integer"}) from None
    return max(-_INT_PARAM_BOUND, min(value, _INT_PARAM_BOUND))


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest({"error": "Request body must be valid JSON"}) from None


def _canonical_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def guarded(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Answer a ``BadRequest`` raised while parsing with its 400 body."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _raw_json(exc.body, status=400)

    return wrapped


# --- history ---------------------------------------------------------------------------------


@routes.get("/history")
@guarded
async def get_history(request: web.Request) -> web.Response:
    _, store = _kernel_store(request)
    max_items = _int_param(request, "max_items")
    offset = _int_param(request, "offset")
    if offset is not None and offset < 0:
        offset = None  # the reference's "no offset" sentinel is -1
    rows = store.history_page(_request_user(request), max_items, offset)
    return _raw_json({prompt_id: msgspec.Raw(entry) for prompt_id, entry in rows})


@routes.get("/history/{prompt_id}")
async def get_history_entry(request: web.Request) -> web.Response:
    _, store = _kernel_store(request)
    prompt_id = request.match_info["prompt_id"]
    entry = store.history_entry(prompt_id, _request_user(request))
    return _raw_json({prompt_id: msgspec.Raw(entry)} if entry is not None else {})


@routes.post("/history")
@guarded
async def post_history(request: web.Request) -> web.Response:
    _, store = _kernel_store(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise BadRequest({"error": "Request body must be a JSON object"})
    delete = body.get("delete")
    if delete is not None and not isinstance(delete, list):
        raise BadRequest({"error": "delete must be a list"})
    user = _request_user(request)
    if body.get("clear"):
        store.clear_history(user)
    if delete:
        store.delete_history([d for d in delete if isinstance(d, str)], user)
    return web.Response(status=200)


# --- jobs --------------------------------------------------------------------------------------


class _JobQuery(msgspec.Struct):
    statuses: list[str]
    workflow_id: str | None
    sort_by: str
    descending: bool
    limit: int | None
    offset: int


def _job_query(request: web.Request) -> _JobQuery:
    query = request.rel_url.query
    statuses = list(jobs.STATUSES)
    raw_status = query.get("status")
    if raw_status is not None:
        wanted = [s.strip().lower() for s in raw_status.split(",") if s.strip()]
        invalid = [s for s in wanted if s not in jobs.STATUSES]
        if invalid:
            raise BadRequest(
                {
                    "error": f"Invalid status value(s): {', '.join(invalid)}. "
                    f"Valid values: {', '.join(jobs.STATUSES)}"
                }
            )
        if wanted:
            statuses = list(dict.fromkeys(wanted))
    sort_by = query.get("sort_by", "created_at").strip().lower()
    if sort_by not in _SORT_KEYS:
        raise BadRequest({"error": f"Invalid sort_by: {sort_by}. Valid values: {', '.join(_SORT_KEYS)}"})
    sort_order = query.get("sort_order", "desc").strip().lower()
    if sort_order not in _SORT_ORDERS:
        raise BadRequest(
            {"error": f"Invalid sort_order: {sort_order}. Valid values: {', '.join(_SORT_ORDERS)}"}
        )
    limit = _int_param(request, "limit")
    if limit is not None and limit <= 0:
        raise BadRequest({"error": "limit must be a positive integer"})
    offset = max(_int_param(request, "offset") or 0, 0)
    return _JobQuery(statuses, query.get("workflow_id"), sort_by, sort_order == "desc", limit, offset)


def _queue_jobs(kernel: Kernel, store: HistoryStore, user: str | None) -> list[tuple[dict[str, Any], str]]:
    """(item list, status) of running then pending prompts, as the reference concatenates them."""
    running, pending = kernel.queue.snapshot()
    # The executor marks a prompt done on the queue just after publishing its result, so the
    # result may already be recorded: then it is listed from history only.
    found: list[tuple[list[Any], str]] = [
        (i.as_list(), jobs.IN_PROGRESS) for i in running if store.state_of(i.prompt_id) != DONE
    ]
    seen = {i.prompt_id for i in running} | {i.prompt_id for i in pending}
    # Between the executor finishing a prompt and its record arriving on the loop, the queue no
    # longer lists it; the store still knows it as running.
    found += [(item, jobs.IN_PROGRESS) for item in store.running_items(user) if item[1] not in seen]
    found += [(i.as_list(), jobs.PENDING) for i in pending]
    return [
        (jobs.queue_job(item, status), status)
        for item, status in found
        if user is None or user_of(item[3]) == user
    ]


def _sort_value(job: dict[str, Any], sort_by: str) -> float:
    if sort_by == "execution_duration":
        return float(jobs.duration(job.get("execution_start_time"), job.get("execution_end_time")))
    created = job.get("create_time")
    return float(created) if isinstance(created, (int, float)) else 0.0


@routes.get("/api/jobs")
@guarded
async def list_jobs(request: web.Request) -> web.Response:
    kernel, store = _kernel_store(request)
    q = _job_query(request)
    user = _request_user(request)
    queued = [
        job
        for job, status in _queue_jobs(kernel, store, user)
        if status in q.statuses and (q.workflow_id is None or job.get("workflow_id") == q.workflow_id)
    ]
    # A stable sort in either direction keeps the concatenation order among equal keys.
    queued.sort(key=lambda j: _sort_value(j, q.sort_by), reverse=q.descending)
    wanted = None if q.limit is None else q.offset + q.limit
    finished, finished_total = store.finished_jobs(
        user,
        [s for s in q.statuses if s not in (jobs.PENDING, jobs.IN_PROGRESS)],
        q.workflow_id,
        q.sort_by,
        q.descending,
        wanted,
    )
    merged: list[Any] = []
    i = j = 0
    while (wanted is None or len(merged) < wanted) and (i < len(queued) or j < len(finished)):
        take_queued = j >= len(finished)
        if not take_queued and i < len(queued):
            qv, fv = _sort_value(queued[i], q.sort_by), float(finished[j][0])
            # Queue items precede history on equal keys: they come first in the concatenation.
            take_queued = qv >= fv if q.descending else qv <= fv
        if take_queued:
            merged.append(queued[i])
            i += 1
        else:
            merged.append(msgspec.Raw(finished[j][1]))
            j += 1
    page = merged[q.offset :]
    total = len(queued) + finished_total
    return _raw_json(
        {
            "jobs": page,
            "pagination": {
                "offset": q.offset,
                "limit": q.limit,
                "total": total,
                "has_more": q.offset + len(page) < total,
            },
        }
    )


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    kernel, store = _kernel_store(request)
    # Any string is looked up as is (the reference checks no UUID format here): unknown ids are 404.
    job_id = request.match_info["job_id"]
    user = _request_user(request)
    entry = store.history_entry(job_id, user)
    if entry is not None:
        return _raw_json(jobs.history_job_detail(decode(entry)))
    running, pending = kernel.queue.snapshot()
    for status, items in ((jobs.IN_PROGRESS, running), (jobs.PENDING, pending)):
        for item in items:
            if item.prompt_id == job_id and (user is None or user_of(item.extra_data) == user):
                return _raw_json(jobs.queue_job_detail(item.as_list(), status))
    for item_list in store.running_items(user):
        if item_list[1] == job_id:
            return _raw_json(jobs.queue_job_detail(item_list, jobs.IN_PROGRESS))
    return _error("Job not found", status=404)


def _owned(kernel: Kernel, store: HistoryStore, job_id: str, user: str | None) -> bool:
    if user is None:
        return True
    running, pending = kernel.queue.snapshot()
    for item in (*running, *pending):
        if item.prompt_id == job_id:
            return user_of(item.extra_data) == user
    return store.user_of(job_id) == user


def cancel_job(kernel: Kernel, store: HistoryStore, job_id: str, user: str | None) -> bool:
    """Dequeue a pending job or interrupt a running one; False for anything else."""
    if not _owned(kernel, store, job_id, user):
        return False
    if kernel.queue.is_pending(job_id):
        removed = kernel.queue.delete([job_id])
        if removed:
            kernel.bus.publish(PromptsRemoved(prompt_ids=removed))
            return True
    # Not pending (any more): it may have started between the check and the delete.
    if kernel.queue.is_running(job_id) and kernel.executor is not None:
        return bool(kernel.executor.interrupt(job_id))
    return False


@routes.post("/api/jobs/{job_id}/cancel")
async def cancel_one(request: web.Request) -> web.Response:
    kernel, store = _kernel_store(request)
    cancelled = cancel_job(kernel, store, request.match_info["job_id"], _request_user(request))
    return _raw_json({"cancelled": cancelled})


@routes.post("/api/jobs/cancel")
@guarded
async def cancel_many(request: web.Request) -> web.Response:
    kernel, store = _kernel_store(request)
    body = await _json_body(request)
    job_ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(job_ids, list):
        raise BadRequest({"error": "job_ids must be a list"})
    invalid = [j for j in job_ids if not _canonical_uuid(j)]
    if invalid:
        raise BadRequest({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid})
    user = _request_user(request)
    results = [cancel_job(kernel, store, job_id, user) for job_id in dict.fromkeys(job_ids)]
    return _raw_json({"cancelled": any(results)})
