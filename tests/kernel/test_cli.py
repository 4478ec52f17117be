"""The real `comfykernel run` process: serves, shuts down cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fakedist import make_distribution

MARKER_PLUGIN = """
import os
from pathlib import Path
from typing import Any
from kernel import hookimpl

@hookimpl
def shutdown(kernel):
    Path(os.environ["MARKER_FILE"]).write_text("shutdown ran")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_to_exit(
    base: Path, *flags: str, plugins: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`comfykernel run` that is expected to exit by itself (a usage or startup error)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kernel.cli",
            "run",
            *flags,
            "--plugins",
            plugins,
            "--base-directory",
            str(base),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def wait_for(url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("sig", "loop_flags", "loop"),
    [
        (signal.SIGTERM, [], "uvloop"),  # the default where uvloop is installed (.ci/run installs it)
        (signal.SIGINT, [], "uvloop"),
        (signal.SIGTERM, ["--event-loop", "asyncio"], "asyncio"),
        (signal.SIGINT, ["--event-loop", "uvloop"], "uvloop"),
    ],
)
def test_run_serves_and_shuts_down_cleanly(
    tmp_path: Path, sig: signal.Signals, loop_flags: list[str], loop: str
):
    site = make_distribution(
        tmp_path / "site", "markerpack", {"marker": "marker_plugin"}, {"marker_plugin": MARKER_PLUGIN}
    )
    marker = tmp_path / "marker.txt"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(site), MARKER_FILE=str(marker))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel.cli",
            "run",
            "--port",
            str(port),
            "--base-directory",
            str(tmp_path / "base"),
            "--plugins",
            "marker",
            *loop_flags,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stats = wait_for(f"http://127.0.0.1:{port}/system_stats")
        assert stats["system"]["argv"][1] == "run"
        assert "<redacted>" in stats["system"]["argv"]
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert marker.read_text() == "shutdown ran"
    assert proc.stdout is not None
    assert f" on {loop} (plugins: " in proc.stdout.read()


def test_unknown_plugin_is_a_startup_error(tmp_path: Path):
    out = run_to_exit(tmp_path, plugins="nope")
    assert out.returncode == 2
    assert "unknown plugin(s): nope" in out.stderr and "available plugins" in out.stderr


def test_port_in_use_exits_1(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_to_exit(tmp_path, "--port", str(port))
    assert out.returncode == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "99999"], "port must be 0-65535"),
        (["--port", "-1"], "port must be 0-65535"),
        (["--max-upload-size", "-1"], "positive number of MB"),
        (["--max-upload-size", "0"], "positive number of MB"),
    ],
)
def test_out_of_range_flags_are_usage_errors(tmp_path: Path, flags: list[str], message: str):
    # --port 99999 used to end in an OverflowError traceback from bind(); a non-positive
    # --max-upload-size started a server that answered 413 to every request body.
    out = run_to_exit(tmp_path, *flags)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def _env_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    import argparse

    from kernel.cli import add_server_options
    from kernel.settings import apply_env_defaults, settings_from_namespace

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_server_options(parser)
    args = parser.parse_args([])
    apply_env_defaults(parser, args)
    return settings_from_namespace(args, {a.dest for a in parser._actions})


def test_env_value_for_a_repeatable_flag_is_one_item(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # It used to be stored as a bare string and fail Settings conversion with a traceback.
    settings = _env_settings(
        monkeypatch,
        COMFYKERNEL_ALLOWED_HOSTS="comfy.lan",
        COMFYKERNEL_EXTRA_MODEL_PATHS_CONFIG=str(tmp_path / "extra.yaml"),
    )
    assert settings.allowed_hosts == ["comfy.lan"]
    assert settings.extra_model_paths_config == [str(tmp_path / "extra.yaml")]


@pytest.mark.parametrize(
    "env",
    [
        {"COMFYKERNEL_PORT": "abc"},
        {"COMFYKERNEL_PORT": "99999"},
        {"COMFYKERNEL_EVENT_LOOP": "bogus"},  # a flag with choices: the choices hold for the variable too
        {"COMFYKERNEL_PREVIEW_METHOD": "sometimes"},
    ],
)
def test_bad_env_value_is_a_usage_error(tmp_path: Path, env: dict[str, str]):
    out = run_to_exit(tmp_path, env={**os.environ, **env})
    assert out.returncode == 2
    assert next(iter(env)) in out.stderr and "Traceback" not in out.stderr
