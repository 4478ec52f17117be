"""Bugs schemathesis found in landed areas, each pinned by a plain request."""

from __future__ import annotations

from typing import Any

import pytest

HUGE = "1281988962463953348768556908544"  # beyond SQLite's 64-bit integers


@pytest.mark.parametrize(
    "path",
    [
        f"/api/jobs?limit={HUGE}",
        f"/api/jobs?offset={HUGE}",
        f"/api/jobs?limit={HUGE}&offset={HUGE}",
        f"/history?max_items={HUGE}",
        f"/history?offset={HUGE}",
        f"/history?max_items=-{HUGE}&offset=-{HUGE}",
    ],
)
async def test_huge_integer_query_values_are_not_a_500(comfy_server: Any, path: str) -> None:
    server = await comfy_server(plugins=["history"])
    status, body = await server.json("GET", path)
    assert status == 200, body
    if path.startswith("/api/jobs"):
        assert body["jobs"] == [] and body["pagination"]["total"] == 0
    else:
        assert body == {}
