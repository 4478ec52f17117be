"""The bounded pending queue: POST /prompt sheds load with 503 + Retry-After beyond --max-queue-size."""

from __future__ import annotations

from typing import Any

from kernel.cli import _SETTINGS_DESTS, build_parser
from kernel.plugins import build_plugin_manager
from kernel.settings import Settings, settings_from_namespace
from tests.conformance.helpers import IDLE
from tests.nodepack import basic

SINK = {"1": {"class_type": "TestSink", "inputs": {"value": 1}}}


async def test_full_queue_answers_503_with_retry_after(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[("testpack", basic), IDLE], max_queue_size=3)
    for _ in range(3):
        status, _body = await server.json("POST", "/prompt", json={"prompt": SINK})
        assert status == 200
    async with server.post("/api/prompt", json={"prompt": SINK}) as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["type"] == "queue_full"
    assert "3" in body["error"]["message"]
    assert body["node_errors"] == {}
    assert server.kernel.queue.remaining() == 3

    # Room again once the queue shrinks.
    status, _ = await server.json("POST", "/queue", json={"clear": True})
    assert status == 200
    status, body = await server.json("POST", "/prompt", json={"prompt": SINK})
    assert status == 200 and body["node_errors"] == {}


async def test_full_queue_sheds_even_malformed_bodies(comfy_server: Any) -> None:
    # The limit is checked first, so a flood never costs a JSON parse or a validation.
    server = await comfy_server(plugins=[("testpack", basic), IDLE], max_queue_size=1)
    assert (await server.json("POST", "/prompt", json={"prompt": SINK}))[0] == 200
    async with server.post("/prompt", data=b"{not json") as resp:
        assert resp.status == 503


def test_default_and_cli_flag() -> None:
    assert Settings().max_queue_size == 10000
    pm, _ = build_plugin_manager([], [])
    parser = build_parser(pm)
    args = parser.parse_args(["run", "--max-queue-size", "7"])
    settings = settings_from_namespace(args, set(_SETTINGS_DESTS))
    assert settings.max_queue_size == 7
    args = parser.parse_args(["run"])
    assert settings_from_namespace(args, set(_SETTINGS_DESTS)).max_queue_size == 10000
