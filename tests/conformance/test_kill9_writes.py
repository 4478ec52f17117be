"""kill -9 during settings and userdata writes: the file on disk is the previous or the new one, never torn.

A real server process takes a stream of large writes and is killed at an arbitrary moment; the
files must then hold exactly one of the payloads that were sent, and a restarted server serves it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3
PAYLOAD_BYTES = 1_500_000  # big enough that a write takes a while, small enough to send many


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("COMFYKERNEL_PLUGINS", None)
        log = open(base / f"server-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernel.cli", "run", "--port", str(self.port)]
            + ["--base-directory", str(base), "--plugins", "userdata"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while self.request("GET", "/settings")[0] != 200:
            assert self.proc.poll() is None, "server died during startup"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)


def _writer(
    server: ServerProcess, kind: str, stop: threading.Event, sent: dict[str, list[bytes]], seed: int
) -> None:
    """Write back to back, recording every payload sent (answered or not)."""
    n = 0
    while not stop.is_set():
        n += 1
        marker = f"{seed}-{n}"
        value = marker + ":" + marker[-1] * PAYLOAD_BYTES
        if kind == "settings":
            body = json.dumps({"Fault.Big": value, "Fault.N": n}).encode()
            path = "/settings"
        else:
            body = json.dumps({"n": n, "pad": value}).encode()
            path = "/userdata/doc.json"
        sent[kind].append(body)
        server.request("POST", path, body)


def test_kill9_during_writes_never_leaves_a_torn_file(tmp_path: Path) -> None:
    settings_file = tmp_path / "user" / "default" / "comfy.settings.json"
    doc_file = tmp_path / "user" / "default" / "doc.json"
    killed_after_writes = 0
    previous_docs: list[bytes] = []
    for round_no in range(ROUNDS):
        server = ServerProcess(tmp_path)
        sent: dict[str, list[bytes]] = {"settings": [], "userdata": []}
        try:
            stop = threading.Event()
            # One writer per file keeps the server writing almost all the time.
            threads = [
                threading.Thread(target=_writer, args=(server, kind, stop, sent, round_no), daemon=True)
                for kind in sent
            ]
            for thread in threads:
                thread.start()
            # Kill at a different point of the write cycle each round.
            time.sleep(1.5 + 0.37 * round_no)
            server.kill9()
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        finally:
            server.stop()
        assert len(sent["settings"]) >= 2 and len(sent["userdata"]) >= 2, "the writers never got going"
        killed_after_writes += len(sent["settings"])

        # Settings are stored re-encoded (merged, indented): compare the parsed values.
        stored = json.loads(settings_file.read_text(encoding="utf-8"))
        candidates = [json.loads(raw) for raw in sent["settings"]]
        assert any(
            stored.get("Fault.N") == c["Fault.N"] and stored["Fault.Big"] == c["Fault.Big"]
            for c in candidates
        )
        # Userdata is stored byte for byte: it must equal one whole payload (this round's or the last).
        assert doc_file.read_bytes() in sent["userdata"] + previous_docs
        previous_docs = sent["userdata"][-2:]

        # A restarted server serves the surviving files intact.
        server = ServerProcess(tmp_path)
        try:
            status, body = server.request("GET", "/settings/Fault.N")
            assert status == 200 and json.loads(body) == stored["Fault.N"]
            status, body = server.request("GET", "/userdata/doc.json")
            assert status == 200 and body == doc_file.read_bytes()
        finally:
            server.stop()
    assert killed_after_writes >= 2 * ROUNDS
