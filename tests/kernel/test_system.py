"""GET /system_stats and /features shapes."""

from __future__ import annotations

import sys

from kernel.builtin.system import REDACTED, redact_argv


async def test_system_stats_fields(comfy_server):
    server = await comfy_server(plugins=[])
    status, stats = await server.json("GET", "/system_stats")
    assert status == 200
    system = stats["system"]
    for key in (
        "os",
        "python_version",
        "embedded_python",
        "comfyui_version",
        "pytorch_version",
        "argv",
        "ram_total",
        "ram_free",
        "required_frontend_version",
    ):
        assert key in system, key
    assert system["os"] == sys.platform
    assert system["python_version"] == sys.version
    assert system["ram_total"] > 0 and 0 <= system["ram_free"] <= system["ram_total"]
    assert system["embedded_python"] is False
    assert system["comfy_package_versions"] == []  # a list, as the web UI iterates it
    device = stats["devices"][0]
    assert device["type"] == "cpu" and device["vram_total"] == system["ram_total"]


def test_path_like_argv_values_are_redacted():
    argv = [
        "/home/me/venv/bin/comfykernel",
        "run",
        "--output-directory",
        "/secret/out",
        "--port",
        "9000",
        "--base-directory=/secret/base",
        "--extra-model-paths-config",
        "/secret/a.yaml",
    ]
    out = redact_argv(argv)
    assert out == [
        "comfykernel",
        "run",
        "--output-directory",
        REDACTED,
        "--port",
        "9000",
        f"--base-directory={REDACTED}",
        "--extra-model-paths-config",
        REDACTED,
    ]
    assert not any("/secret" in a for a in out)
