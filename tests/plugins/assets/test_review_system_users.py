"""Regression: on a multi-user server, system users (ids starting with ``__``) cannot act over HTTP."""

from __future__ import annotations

from tests.plugins.assets.helpers import PLUGINS, form, png_bytes


async def test_system_user_header_is_refused(comfy_server):
    server = await comfy_server(plugins=PLUGINS, multi_user=True)
    system = {"Comfy-User": "__system"}
    async with server.post("/api/assets", data=form(png_bytes(1), "a.png"), headers=system) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert body["error"]["code"] == "UNKNOWN_USER"
    status, body = await server.json("GET", "/api/assets", headers=system)
    assert status == 403 and body["error"]["code"] == "UNKNOWN_USER"
    status, body = await server.json("GET", "/api/tags", headers=system)
    assert status == 403
    # Nothing was stored for the refused upload.
    status, body = await server.json("GET", "/api/assets", headers={"Comfy-User": "alice"})
    assert status == 200 and body["total"] == 0
