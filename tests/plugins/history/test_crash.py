"""The record survives kill -9: a real server process is killed mid-run and started again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``comfykernel run`` in a subprocess with the history plugin and the slow test pack."""

    def __init__(self, base: Path, *extra_args: str) -> None:
        self.base = base
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = _free_port()
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            COMFYKERNEL_EXTRA_PLUGINS="slowpack=tests.plugins.history.slowpack",
        )
        env.pop("COMFYKERNEL_PLUGINS", None)
        log = open(self.base / f"server-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel.cli",
                "run",
                "--port",
                str(self.port),
                "--base-directory",
                str(self.base),
                "--plugins",
                "history,slowpack",
                *self.extra_args,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_until(lambda: self.call("GET", "/system_stats")[0] == 200, 60, "server start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, None

    def wait_until(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc is not None and self.proc.poll() is None, f"server died while waiting for {what}"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def history(self) -> dict[str, Any]:
        status, body = self.call("GET", "/history")
        assert status == 200, body
        return body

    def queue_prompt(self, tag: str, seconds: float, log_path: Path) -> str:
        graph = {
            "1": {
                "class_type": "HistorySlow",
                "inputs": {"tag": tag, "seconds": seconds, "log_path": str(log_path)},
            }
        }
        status, body = self.call("POST", "/prompt", {"prompt": graph})
        assert status == 200, body
        return body["prompt_id"]


@pytest.fixture
def servers(tmp_path: Path):
    started: list[Server] = []

    def factory(*args: str) -> Server:
        server = Server(tmp_path, *args)
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


def _runs(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    return [line.split(" ", 1)[1] for line in log_path.read_text().splitlines() if line.startswith("start ")]


def test_kill9_mid_run_every_accepted_prompt_ends_in_history_once(servers, tmp_path):
    log_path = tmp_path / "runs.log"
    server = servers()
    ids = {server.queue_prompt(f"p{n:02}", 0.15, log_path): f"p{n:02}" for n in range(20)}
    # Kill while the queue is part-way through: some finished, one running, the rest pending.
    server.wait_until(lambda: len(server.history()) >= 4, 60, "a few prompts to finish")
    server.kill9()
    finished_before = set(_read_history_ids(tmp_path))
    runs_before = _runs(log_path)
    assert 4 <= len(finished_before) < 20

    server = servers()
    server.wait_until(lambda: set(ids) <= set(server.history()), 90, "every accepted prompt in history")
    history = server.history()
    assert len(history) == len(ids)
    assert all(entry["status"]["status_str"] == "success" for entry in history.values())
    assert all(entry["outputs"]["1"]["text"] == [ids[pid]] for pid, entry in history.items())

    runs_after = _runs(log_path)[len(runs_before) :]
    # Nothing recorded as finished ran again; the others ran after the restart in their order,
    # except the one the kill cut short: it may be what killed the process, so it is retried
    # behind the prompts that were waiting.
    assert not {ids[pid] for pid in finished_before} & set(runs_after)
    cut_short = set(runs_before) - {ids[pid] for pid in finished_before}
    assert len(cut_short) <= 1
    # The server records a prompt as started before its node logs the run: a kill between the two
    # leaves the first unfinished prompt marked as running (so retried last) with no line in the
    # log yet. Either way only that prompt may move behind the others.
    unfinished = sorted(set(ids.values()) - {ids[pid] for pid in finished_before})
    moved = {unfinished[0]} if not cut_short and runs_after and runs_after[-1] == unfinished[0] else cut_short
    assert moved <= {unfinished[0]}
    assert runs_after == sorted(set(runs_after) - moved) + sorted(moved)
    assert set(runs_after) == {ids[pid] for pid in set(ids) - finished_before}
    # Every prompt ran at most twice in total (the one killed mid-run once more).
    counts = {tag: (runs_before + runs_after).count(tag) for tag in ids.values()}
    assert max(counts.values()) <= 2
    assert server.call("GET", "/queue")[1] == {"queue_running": [], "queue_pending": []}


def _read_history_ids(base: Path) -> list[str]:
    """The history as the killed process left it on disk (read without a server)."""
    import sqlite3

    from plugins.history.store import DB_NAME

    conn = sqlite3.connect(base / "user" / DB_NAME)
    try:
        return [row[0] for row in conn.execute("SELECT prompt_id FROM prompts WHERE seq IS NOT NULL")]
    finally:
        conn.close()


def test_prompt_running_at_every_crash_fails_after_its_attempts(servers, tmp_path):
    log_path = tmp_path / "runs.log"
    server = servers("--history-max-attempts", "2")
    doomed = server.queue_prompt("doomed", 120, log_path)
    after = server.queue_prompt("after", 0.05, log_path)
    for crash in range(2):
        server.wait_until(
            lambda n=crash + 1: _runs(log_path).count("doomed") == n, 60, "the doomed prompt to start"
        )
        server.kill9()
        server = servers("--history-max-attempts", "2")
    server.wait_until(lambda: after in server.history(), 60, "the prompt behind it")
    entry = server.history()[doomed]
    assert entry["status"]["status_str"] == "error"
    ((name, data),) = entry["status"]["messages"]
    assert name == "execution_error" and "attempt 2 of 2" in data["exception_message"]
    status, job = server.call("GET", f"/api/jobs/{doomed}")
    assert status == 200 and job["status"] == "failed"
    assert _runs(log_path).count("doomed") == 2
