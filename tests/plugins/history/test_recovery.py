"""Restart recovery in-process: the record written by one server is read back by the next."""

from __future__ import annotations

from unittest.mock import ANY

from kernel import hookimpl
from kernel.events import PromptFinished, PromptStarted
from tests.plugins.history.helpers import finish, make_item, queue, start_quiet, status


async def _restart(comfy_server, server, **settings):
    await server.server.stop()
    return await start_quiet(comfy_server, **settings)


async def test_pending_prompts_return_in_their_original_order(comfy_server):
    server = await start_quiet(comfy_server)
    items = [queue(server.kernel, make_item(n, create_time=n)) for n in (3, 1, 2)]
    cancelled = queue(server.kernel, make_item(4))
    async with server.post(f"/api/jobs/{cancelled.prompt_id}/cancel") as resp:
        assert resp.status == 200
    server2 = await _restart(comfy_server, server)
    running, pending = server2.kernel.queue.snapshot()
    assert running == []
    restored = sorted(pending, key=lambda i: i.sort_key())
    assert [i.prompt_id for i in restored] == [items[1].prompt_id, items[2].prompt_id, items[0].prompt_id]
    by_id = {i.prompt_id: i for i in restored}
    assert by_id[items[0].prompt_id].number == 3
    assert by_id[items[0].prompt_id].extra_data == {"create_time": 3}
    # New prompts queue behind the recovered ones.
    assert server2.kernel.queue.next_number() > 3
    _, body = await server2.json("GET", "/api/jobs?status=pending")
    assert len(body["jobs"]) == 3


async def test_finished_prompts_are_never_rerun(comfy_server):
    server = await start_quiet(comfy_server)
    done = finish(server.kernel, make_item(0))
    server2 = await _restart(comfy_server, server)
    assert server2.kernel.queue.snapshot() == ([], [])
    _, body = await server2.json("GET", "/history")
    assert list(body) == [done.prompt_id]


async def test_running_prompt_is_retried_then_failed(comfy_server):
    server = await start_quiet(comfy_server)
    item = queue(server.kernel, make_item(0))
    server.kernel.queue.get(timeout=1)
    server.kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))  # attempt 1 dies
    server = await _restart(comfy_server, server)
    assert [i.prompt_id for i in server.kernel.queue.snapshot()[1]] == [item.prompt_id]
    assert await server.json("GET", "/history") == (200, {})
    server.kernel.queue.get(timeout=1)
    server.kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))  # attempt 2 dies
    server = await _restart(comfy_server, server)
    assert server.kernel.queue.snapshot() == ([], [])
    _, body = await server.json("GET", f"/history/{item.prompt_id}")
    status = body[item.prompt_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    ((name, data),) = status["messages"]
    assert name == "execution_error"
    assert "server stopped while this prompt was running" in data["exception_message"]
    assert "attempt 2 of 2" in data["exception_message"]
    _, job = await server.json("GET", f"/api/jobs/{item.prompt_id}")
    assert job["status"] == "failed"
    assert job["execution_error"]["exception_type"] == "ServerRestartedError"
    # A third start changes nothing.
    server = await _restart(comfy_server, server)
    assert server.kernel.queue.snapshot() == ([], [])
    assert list((await server.json("GET", "/history"))[1]) == [item.prompt_id]


async def test_max_attempts_option(comfy_server):
    server = await start_quiet(comfy_server, extra={"history_max_attempts": 1})
    item = queue(server.kernel, make_item(0))
    server.kernel.queue.get(timeout=1)
    server.kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))
    server = await _restart(comfy_server, server, extra={"history_max_attempts": 1})
    assert server.kernel.queue.snapshot() == ([], [])
    _, body = await server.json("GET", f"/history/{item.prompt_id}")
    assert "attempt 1 of 1" in body[item.prompt_id]["status"]["messages"][0][1]["exception_message"]


class _InterruptOnShutdown:
    """Does what the executor does when the server stops mid-prompt."""

    def __init__(self, item) -> None:
        self.item = item

    @hookimpl
    def shutdown(self, kernel) -> None:
        kernel.bus.publish(
            PromptFinished(
                item=self.item, status=status("interrupted", self.item.prompt_id), outputs={}, meta={}
            )
        )


async def test_graceful_shutdown_interruption_is_not_a_cancellation(comfy_server):
    item = make_item(0)
    server = await start_quiet(comfy_server, plugins=["history", ("interrupter", _InterruptOnShutdown(item))])
    queue(server.kernel, item)
    server.kernel.queue.get(timeout=1)
    server.kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))
    server = await _restart(comfy_server, server)
    assert await server.json("GET", "/history") == (200, {})
    assert [i.prompt_id for i in server.kernel.queue.snapshot()[1]] == [item.prompt_id]
    # The interrupted run did not use up an attempt: two more crashes are needed to fail it.
    for crash in (1, 2):
        assert server.kernel.queue.get(timeout=1).prompt_id == item.prompt_id
        server.kernel.bus.publish(PromptStarted(prompt_id=item.prompt_id))
        server = await _restart(comfy_server, server)
        assert (await server.json("GET", "/history"))[1] == ({} if crash == 1 else {item.prompt_id: ANY})
    _, body = await server.json("GET", f"/history/{item.prompt_id}")
    assert "attempt 2 of 2" in body[item.prompt_id]["status"]["messages"][0][1]["exception_message"]


async def test_user_interruption_is_recorded_as_cancelled(comfy_server):
    server = await start_quiet(comfy_server)
    item = finish(server.kernel, make_item(0), "interrupted")
    server = await _restart(comfy_server, server)
    assert server.kernel.queue.snapshot() == ([], [])
    _, job = await server.json("GET", f"/api/jobs/{item.prompt_id}")
    assert job["status"] == "cancelled"
