"""Regression: a client cannot store a file under a name the startup sweep deletes as a stray temp."""

from __future__ import annotations

from tests.plugins.userdata.helpers import raw, user_root


async def test_temp_file_names_are_refused_so_a_restart_loses_nothing(comfy_server):
    server = await comfy_server(plugins=["userdata"])
    status, _, _ = await raw(server, "POST", "/userdata/workflows%2F.userdata-mine.tmp", data=b"lost")
    assert status == 400
    status, _, _ = await raw(server, "POST", "/userdata/a.json", data=b"keep me")
    assert status == 200
    status, _, _ = await raw(server, "POST", "/userdata/a.json/move/.userdata-x.tmp")
    assert status == 400
    assert (user_root(server) / "a.json").read_bytes() == b"keep me"
    assert not list(user_root(server).rglob(".userdata-*"))
