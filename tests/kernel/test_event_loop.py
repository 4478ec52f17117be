"""Choosing the server's event loop (kernel/event_loop.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from kernel import event_loop
from kernel.errors import StartupError


async def _which() -> str:
    return event_loop.loop_name(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop_asyncio_on_asyncio() -> None:
    pytest.importorskip("uvloop", reason="uvloop has no build for this platform")
    assert event_loop.run(_which()) == "uvloop"
    assert event_loop.run(_which(), "uvloop") == "uvloop"
    assert event_loop.run(_which(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop.run(_which(), "auto") == "asyncio"
    with pytest.raises(StartupError, match="pip install uvloop"):
        event_loop.loop_factory("uvloop")
