"""A real ``comfykernel run`` process for tests about signals, crashes and durability.

The hostile node pack (tests/nodepack/hostile.py) is loaded through COMFYKERNEL_EXTRA_PLUGINS
next to the plugins a test asks for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process under ``base``; ``start()`` again after it died to restart it."""

    def __init__(self, base: Path, plugins: str = "history", *args: str) -> None:
        self.base = base
        self.plugins = plugins
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.port = free_port()
        env = dict(
            os.environ, PYTHONPATH=str(REPO), COMFYKERNEL_EXTRA_PLUGINS="hostile=tests.nodepack.hostile"
        )
        env.pop("COMFYKERNEL_PLUGINS", None)
        log_path = self.base / f"server-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernel.cli", "run", "--port", str(self.port)]
                + ["--base-directory", str(self.base), "--plugins", f"{self.plugins},hostile", *self.args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until(lambda: self.call("GET", "/system_stats")[0] == 200, 90, "the server to start")
        return self

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=20)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, None

    def submit(self, prompt: dict[str, Any], **extra: Any) -> str:
        status, body = self.call("POST", "/prompt", {"prompt": prompt, **extra})
        assert status == 200, body
        return str(body["prompt_id"])

    def history(self) -> dict[str, Any]:
        status, body = self.call("GET", "/history")
        assert status == 200, body
        return dict(body)

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if not self.alive():
                raise AssertionError(f"the server died while waiting for {what}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


def history_rows(base: Path) -> dict[str, tuple[str, int]]:
    """prompt_id -> (state, attempts) as the history database holds it (read without a server)."""
    from plugins.history.store import DB_NAME

    conn = sqlite3.connect(base / "user" / DB_NAME)
    try:
        return {
            pid: (state, attempts)
            for pid, state, attempts in conn.execute("SELECT prompt_id, state, attempts FROM prompts")
        }
    finally:
        conn.close()


def wait_file_prompt(path: Path, tag: str) -> dict[str, Any]:
    return {"1": {"class_type": "HostileWaitFile", "inputs": {"path": str(path), "tag": tag}}}
