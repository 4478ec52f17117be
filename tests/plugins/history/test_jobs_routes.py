"""GET /api/jobs, GET /api/jobs/{id} and the cancel routes over real HTTP."""

from __future__ import annotations

import uuid

from kernel.events import PromptFinished, PromptsRemoved, PromptStarted
from tests.plugins.history.helpers import finish, make_item, queue, start_quiet
from tests.plugins.history.helpers import status as make_status

ALL_STATUSES = "Valid values: pending, in_progress, completed, failed, cancelled"


async def _jobs(server, query: str = "") -> dict:
    status, body = await server.json("GET", "/api/jobs" + query)
    assert status == 200, body
    return body


async def test_jobs_routes_exist_only_under_api(comfy_server):
    server = await start_quiet(comfy_server)
    async with server.get("/jobs") as resp:
        assert resp.status == 404
    assert (await server.json("GET", "/api/jobs"))[0] == 200


async def test_every_status_and_the_list_shape(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    done = finish(k, make_item(0, create_time=10, workflow_id="wf-a"))
    failed = finish(k, make_item(1, create_time=20), "error")
    cancelled = finish(k, make_item(2, create_time=30), "interrupted")
    running = queue(k, make_item(3, create_time=40))
    assert k.queue.get(timeout=1).prompt_id == running.prompt_id
    pending = queue(k, make_item(4, create_time=50))
    body = await _jobs(server)
    got = {j["id"]: j for j in body["jobs"]}
    assert [j["id"] for j in body["jobs"]] == [
        pending.prompt_id,
        running.prompt_id,
        cancelled.prompt_id,
        failed.prompt_id,
        done.prompt_id,
    ]
    assert got[pending.prompt_id] == {
        "id": pending.prompt_id,
        "status": "pending",
        "priority": 4,
        "create_time": 50,
        "outputs_count": 0,
        "previewable_outputs_count": 0,
    }
    assert got[running.prompt_id]["status"] == "in_progress"
    assert got[done.prompt_id] == {
        "id": done.prompt_id,
        "status": "completed",
        "priority": 0,
        "create_time": 10,
        "execution_start_time": 1000,
        "execution_end_time": 2000,
        "outputs_count": 1,
        "previewable_outputs_count": 1,
        "preview_output": {
            "filename": "a.png",
            "subfolder": "",
            "type": "output",
            "nodeId": "1",
            "mediaType": "images",
        },
        "workflow_id": "wf-a",
    }
    assert got[failed.prompt_id]["status"] == "failed"
    assert got[failed.prompt_id]["execution_error"]["exception_message"] == "boom"
    assert got[cancelled.prompt_id]["status"] == "cancelled"
    assert "execution_error" not in got[cancelled.prompt_id]
    assert body["pagination"] == {"offset": 0, "limit": None, "total": 5, "has_more": False}


async def test_status_filter_accepts_comma_lists_in_any_case(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    done = finish(k, make_item(0, create_time=1))
    failed = finish(k, make_item(1, create_time=2), "error")
    pending = queue(k, make_item(2, create_time=3))
    body = await _jobs(server, "?status=completed")
    assert [j["id"] for j in body["jobs"]] == [done.prompt_id]
    body = await _jobs(server, "?status=FAILED,%20pending")
    assert [j["id"] for j in body["jobs"]] == [pending.prompt_id, failed.prompt_id]
    assert body["pagination"]["total"] == 2


async def test_invalid_status_is_400(comfy_server):
    server = await start_quiet(comfy_server)
    status, body = await server.json("GET", "/api/jobs?status=done,pending,weird")
    assert status == 400
    assert body == {"error": f"Invalid status value(s): done, weird. {ALL_STATUSES}"}


async def test_workflow_id_filter(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    a = finish(k, make_item(0, workflow_id="A"))
    finish(k, make_item(1, workflow_id="B"))
    pa = queue(k, make_item(2, workflow_id="A"))
    body = await _jobs(server, "?workflow_id=A")
    assert {j["id"] for j in body["jobs"]} == {a.prompt_id, pa.prompt_id}
    assert all(j["workflow_id"] == "A" for j in body["jobs"])


async def test_sorting_by_creation_and_duration(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    slow = finish(k, make_item(0, create_time=100), start=0, end=900)
    fast = finish(k, make_item(1, create_time=300), start=0, end=100)
    mid = finish(k, make_item(2, create_time=200), start=0, end=500)
    body = await _jobs(server)
    assert [j["id"] for j in body["jobs"]] == [fast.prompt_id, mid.prompt_id, slow.prompt_id]
    body = await _jobs(server, "?sort_order=asc")
    assert [j["id"] for j in body["jobs"]] == [slow.prompt_id, mid.prompt_id, fast.prompt_id]
    body = await _jobs(server, "?sort_by=execution_duration")
    assert [j["id"] for j in body["jobs"]] == [slow.prompt_id, mid.prompt_id, fast.prompt_id]
    body = await _jobs(server, "?sort_by=execution_duration&sort_order=asc")
    assert [j["id"] for j in body["jobs"]] == [fast.prompt_id, mid.prompt_id, slow.prompt_id]


async def test_ties_keep_queue_before_history_and_history_order(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    h1 = finish(k, make_item(0, create_time=5))
    h2 = finish(k, make_item(1, create_time=5))
    p = queue(k, make_item(2, create_time=5))
    for order in ("desc", "asc"):
        body = await _jobs(server, f"?sort_order={order}")
        assert [j["id"] for j in body["jobs"]] == [p.prompt_id, h1.prompt_id, h2.prompt_id]


async def test_bad_sort_parameters_are_400(comfy_server):
    server = await start_quiet(comfy_server)
    status, body = await server.json("GET", "/api/jobs?sort_by=name")
    assert status == 400 and "sort_by" in body["error"]
    status, body = await server.json("GET", "/api/jobs?sort_order=up")
    assert status == 400 and "sort_order" in body["error"]


async def test_limit_offset_and_pagination(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    ids = [finish(k, make_item(i, create_time=i)).prompt_id for i in range(4)]
    ids += [queue(k, make_item(4 + i, create_time=4 + i)).prompt_id for i in range(2)]
    newest_first = ids[::-1]
    body = await _jobs(server, "?limit=2")
    assert [j["id"] for j in body["jobs"]] == newest_first[:2]
    assert body["pagination"] == {"offset": 0, "limit": 2, "total": 6, "has_more": True}
    body = await _jobs(server, "?limit=3&offset=2")
    assert [j["id"] for j in body["jobs"]] == newest_first[2:5]
    assert body["pagination"] == {"offset": 2, "limit": 3, "total": 6, "has_more": True}
    body = await _jobs(server, "?offset=4")
    assert [j["id"] for j in body["jobs"]] == newest_first[4:]
    assert body["pagination"]["has_more"] is False
    body = await _jobs(server, "?offset=-3&limit=1")
    assert body["pagination"]["offset"] == 0
    assert [j["id"] for j in body["jobs"]] == newest_first[:1]


async def test_bad_limit_and_offset_are_400(comfy_server):
    server = await start_quiet(comfy_server)
    assert await server.json("GET", "/api/jobs?limit=abc") == (400, {"error": "limit must be an integer"})
    assert await server.json("GET", "/api/jobs?limit=0") == (
        400,
        {"error": "limit must be a positive integer"},
    )
    assert await server.json("GET", "/api/jobs?limit=-2") == (
        400,
        {"error": "limit must be a positive integer"},
    )
    assert await server.json("GET", "/api/jobs?offset=x") == (400, {"error": "offset must be an integer"})


async def test_job_detail_for_history_and_queue(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    done = finish(k, make_item(0, create_time=7))
    pending = queue(k, make_item(1, create_time=8))
    status, body = await server.json("GET", f"/api/jobs/{done.prompt_id}")
    assert status == 200
    assert body["status"] == "completed"
    assert body["outputs"] == {"1": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    assert body["execution_status"]["status_str"] == "success"
    assert body["workflow"] == {"prompt": done.prompt, "extra_data": {"create_time": 7}}
    status, body = await server.json("GET", f"/api/jobs/{pending.prompt_id}")
    assert status == 200
    assert body["status"] == "pending"
    assert body["workflow"] == {"prompt": pending.prompt, "extra_data": {"create_time": 8}}
    assert "outputs" not in body


async def test_job_detail_errors(comfy_server):
    server = await start_quiet(comfy_server)
    assert await server.json("GET", f"/api/jobs/{uuid.uuid4()}") == (404, {"error": "Job not found"})
    # No UUID format check: any unknown id, however it looks, is simply not found.
    assert await server.json("GET", "/api/jobs/not-a-uuid") == (404, {"error": "Job not found"})


async def test_cancel_pending_job(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    removed: list[list[str]] = []
    k.bus.subscribe(lambda e: removed.append(e.prompt_ids) if isinstance(e, PromptsRemoved) else None)
    item = queue(k, make_item(0))
    assert await server.json("POST", f"/api/jobs/{item.prompt_id}/cancel") == (200, {"cancelled": True})
    assert not k.queue.is_pending(item.prompt_id)
    assert removed == [[item.prompt_id]]
    # Idempotent: nothing left to cancel.
    assert await server.json("POST", f"/api/jobs/{item.prompt_id}/cancel") == (200, {"cancelled": False})
    assert (await _jobs(server))["jobs"] == []


async def test_cancel_finished_or_unknown_job_is_false(comfy_server):
    server = await start_quiet(comfy_server)
    done = finish(server.kernel, make_item(0))
    assert await server.json("POST", f"/api/jobs/{done.prompt_id}/cancel") == (200, {"cancelled": False})
    assert await server.json("POST", f"/api/jobs/{uuid.uuid4()}/cancel") == (200, {"cancelled": False})
    assert (await _jobs(server))["jobs"][0]["status"] == "completed"


async def test_cancel_running_job_interrupts_it(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    fake = k.executor
    item = queue(k, make_item(0))
    k.queue.get(timeout=1)
    assert await server.json("POST", f"/api/jobs/{item.prompt_id}/cancel") == (200, {"cancelled": True})
    assert fake.interrupted == [item.prompt_id]


async def test_batch_cancel(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    a = queue(k, make_item(0))
    b = queue(k, make_item(1))
    keep = queue(k, make_item(2))
    status, body = await server.json("POST", "/api/jobs/cancel", json={"job_ids": [a.prompt_id, b.prompt_id]})
    assert (status, body) == (200, {"cancelled": True})
    assert [i.prompt_id for i in k.queue.snapshot()[1]] == [keep.prompt_id]
    status, body = await server.json("POST", "/api/jobs/cancel", json={"job_ids": [str(uuid.uuid4())]})
    assert (status, body) == (200, {"cancelled": False})
    assert await server.json("POST", "/api/jobs/cancel", json={"job_ids": []}) == (200, {"cancelled": False})


async def test_batch_cancel_bad_bodies(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    a = queue(k, make_item(0))
    status, body = await server.json(
        "POST", "/api/jobs/cancel", data=b"not json", headers={"Content-Type": "application/json"}
    )
    assert (status, body) == (400, {"error": "Request body must be valid JSON"})
    status, body = await server.json("POST", "/api/jobs/cancel", json={"job_ids": "abc"})
    assert (status, body) == (400, {"error": "job_ids must be a list"})
    upper = a.prompt_id.upper()
    status, body = await server.json("POST", "/api/jobs/cancel", json={"job_ids": [a.prompt_id, upper, 5]})
    assert status == 400
    assert body == {"error": "job_ids contains invalid id(s)", "invalid_ids": [upper, 5]}
    # Nothing was cancelled by the refused request.
    assert k.queue.is_pending(a.prompt_id)


async def test_a_finished_prompt_still_on_the_queue_is_listed_once(comfy_server):
    server = await start_quiet(comfy_server)
    k = server.kernel
    item = queue(k, make_item(0))
    k.queue.get(timeout=1)  # running, and the executor's result arrives before its task_done
    k.bus.publish(PromptStarted(prompt_id=item.prompt_id))
    k.bus.publish(
        PromptFinished(item=item, status=make_status("success", item.prompt_id), outputs={}, meta={})
    )
    body = await _jobs(server)
    assert [(j["id"], j["status"]) for j in body["jobs"]] == [(item.prompt_id, "completed")]
    k.queue.task_done(item.prompt_id)
    # ...and the window the other way round: done on the queue, result not yet recorded.
    late = queue(k, make_item(1))
    k.queue.get(timeout=1)
    k.bus.publish(PromptStarted(prompt_id=late.prompt_id))
    k.queue.task_done(late.prompt_id)
    body = await _jobs(server, "?status=in_progress")
    assert [j["id"] for j in body["jobs"]] == [late.prompt_id]
    status_code, detail = await server.json("GET", f"/api/jobs/{late.prompt_id}")
    assert status_code == 200 and detail["status"] == "in_progress"
