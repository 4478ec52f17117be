"""Shared helpers: an executor that never runs anything, so prompts stay queued."""

from __future__ import annotations

from typing import Any

from kernel import Kernel, hookimpl


class IdleExecutor:
    """Stands in for the engine: prompts pile up in the queue instead of running."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def replay(self, sid: str) -> list[Any]:
        return []

    def free(self, unload_models: bool, free_memory: bool) -> None:
        pass

    def interrupt(self, prompt_id: str | None = None) -> bool:
        return False


class IdlePlugin:
    @hookimpl(trylast=True)
    def configure(self, kernel: Kernel) -> None:
        kernel.executor = IdleExecutor()


IDLE = ("idle_executor", IdlePlugin())
