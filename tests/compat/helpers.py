"""The packs under ``packs/`` and a server started the way ComfyUI users start one (``main.py`` flags)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
PACKS = HERE / "packs"
EP_SITE = HERE / "ep_site"
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LauncherServer:
    """``python -m comfykernel <reference flags>`` in a subprocess, plus an HTTP client."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EP_SITE), str(ROOT)]))
        env.pop("COMFYKERNEL_PLUGINS", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfykernel", "--listen", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.session: aiohttp.ClientSession | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 90.0) -> None:
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                async with self.session.get(self.url + "/system_stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log}")

    def get(self, path: str, **kwargs: Any) -> Any:
        assert self.session is not None
        return self.session.get(self.url + path, **kwargs)

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def ws(self) -> tuple[str, aiohttp.ClientWebSocketResponse]:
        assert self.session is not None
        client_id = uuid.uuid4().hex
        ws = await self.session.ws_connect(f"{self.url}/ws?clientId={client_id}")
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "status"
        return client_id, ws

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def run_prompt(
    server: LauncherServer, ws: Any, client_id: str, prompt: dict[str, Any], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Submit over HTTP; every WebSocket message until the prompt's final ``executing``."""
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt, "client_id": client_id})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            messages.append({"type": "binary", "data": msg.data})
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(msg.data)
        messages.append(data)
        d = data.get("data") or {}
        if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
            return messages


def of_type(messages: list[dict[str, Any]], type_: str) -> list[Any]:
    return [m["data"] for m in messages if m["type"] == type_]


def executed(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {d["node"]: d["output"] for d in of_type(messages, "executed")}


def executing(messages: list[dict[str, Any]]) -> list[str]:
    return [d["node"] for d in of_type(messages, "executing") if d["node"] is not None]
