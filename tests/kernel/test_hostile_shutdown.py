"""SIGTERM / SIGINT stop a real server within 5 s with exit code 0, whatever the running prompt
does; a second signal ends it at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.kernel.process_helpers import ServerProcess, history_rows
from tests.kernel.test_hostile_prompts import loop_prompt

STOP_LIMIT = 5.0


@pytest.fixture
def server(tmp_path: Path):
    started: list[ServerProcess] = []

    def factory(*args: str) -> ServerProcess:
        process = ServerProcess(tmp_path, "history", *args).start()
        started.append(process)
        return process

    yield factory
    for process in started:
        process.kill()


async def _wait_running(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, nodes: int = 1) -> None:
    """Read ``ws`` until ``nodes`` nodes of the prompt started executing."""
    seen = 0
    while seen < nodes:
        msg = await ws.receive(timeout=60)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if (
            data["type"] == "executing"
            and data["data"].get("prompt_id") == prompt_id
            and data["data"]["node"]
        ):
            seen += 1


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMsgType:
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return msg.type


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_during_a_runaway_loop_with_a_client_connected(server: Any, sig: signal.Signals) -> None:
    process = server()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{process.url}/ws?clientId=watcher")
        prompt_id = process.submit(loop_prompt(100_000), client_id="watcher")
        await _wait_running(ws, prompt_id, nodes=20)
        signalled = time.monotonic()
        process.signal(sig)
        closing = asyncio.ensure_future(_read_until_closed(ws))
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait_exit, STOP_LIMIT + 5)
        took = time.monotonic() - signalled
        # The socket was closed by the server with a close frame, not cut.
        assert await closing == aiohttp.WSMsgType.CLOSE
    assert code == 0, process.log_text()[-3000:]
    assert took < STOP_LIMIT, took
    log = process.log_text()
    assert "terminate called" not in log and "Traceback" not in log
    # The interrupted prompt is recorded as the shutdown's, not as a crash: it runs again.
    assert history_rows(process.base)[prompt_id] == ("pending", 0)


async def test_sigterm_while_a_node_ignores_interruption(server: Any) -> None:
    process = server()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{process.url}/ws?clientId=watcher")
        prompt_id = process.submit(
            {"1": {"class_type": "HostileBlock", "inputs": {"seconds": 60}}}, client_id="watcher"
        )
        await _wait_running(ws, prompt_id)
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait_exit, STOP_LIMIT + 5)
        took = time.monotonic() - signalled
    assert code == 0, process.log_text()[-3000:]
    assert took < STOP_LIMIT, took
    assert "terminate called" not in process.log_text()
    assert history_rows(process.base)[prompt_id] == ("pending", 0)


async def test_second_signal_exits_at_once(server: Any) -> None:
    process = server()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{process.url}/ws?clientId=watcher")
        prompt_id = process.submit(
            {"1": {"class_type": "HostileBlock", "inputs": {"seconds": 60}}}, client_id="watcher"
        )
        await _wait_running(ws, prompt_id)
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        process.signal(signal.SIGINT)
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait_exit, STOP_LIMIT)
        took = time.monotonic() - signalled
    assert code == 0
    # The first signal alone waits 1.5 s for the deaf node before leaving.
    assert took < 1.4, took
    assert "again: exiting now" in process.log_text()
