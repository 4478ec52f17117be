"""Without the history plugin the server runs, with no /history or /api/jobs routes."""

from __future__ import annotations

from tests.plugins.history.helpers import make_item, queue


async def test_server_without_history_plugin(comfy_server):
    server = await comfy_server(plugins=[])
    assert not server.kernel.has_plugin("history")
    for path in ("/history", "/api/history", "/api/jobs", "/history/abc"):
        async with server.get(path) as resp:
            assert resp.status == 404, path
    # The queue still works in memory.
    item = queue(server.kernel, make_item(0))
    assert server.kernel.queue.is_pending(item.prompt_id)
