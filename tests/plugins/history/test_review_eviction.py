"""Regression: evicting an old history entry must not forget a resubmitted prompt that is pending."""

from __future__ import annotations

from tests.plugins.history.helpers import finish, make_item, queue, start_quiet


async def test_eviction_keeps_a_resubmitted_pending_prompt(comfy_server):
    server = await start_quiet(comfy_server, extra={"history_max_items": 1})
    old = finish(server.kernel, make_item(0))
    # The same prompt_id is submitted again: its old entry stays listed while the new run waits.
    again = queue(server.kernel, make_item(1, prompt_id=old.prompt_id))
    finish(server.kernel, make_item(2))  # evicts the oldest entry: the old run of `again`
    await server.server.stop()

    server2 = await start_quiet(comfy_server, extra={"history_max_items": 1})
    _, pending = server2.kernel.queue.snapshot()
    assert [i.prompt_id for i in pending] == [again.prompt_id]
    _, body = await server2.json("GET", f"/history/{old.prompt_id}")
    assert body == {}
