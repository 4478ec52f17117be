"""Regression: upload temp files left by a killed process are removed when the server starts."""

from __future__ import annotations

from tests.plugins.assets.helpers import PLUGINS


async def test_startup_removes_upload_temps_of_a_killed_process(comfy_server, tmp_path):
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    stale = user_dir / ".assets-upload-abc123"
    stale.write_bytes(b"half an upload")
    kept = user_dir / "notes.txt"
    kept.write_text("mine")
    server = await comfy_server(plugins=PLUGINS)
    assert server.kernel.settings.user_path == user_dir
    assert not stale.exists()
    assert kept.read_text() == "mine"
