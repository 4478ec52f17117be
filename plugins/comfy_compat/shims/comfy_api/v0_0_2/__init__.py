"""``comfy_api.v0_0_2``: ``ComfyAPI`` (async) and ``ComfyAPISync`` with ``execution.set_progress``."""

from __future__ import annotations

from typing import Any

from kernel.progress import set_progress as _set_progress


class _ExecutionSync:
    def set_progress(
        self,
        value: float,
        max_value: float,
        node_id: str | None = None,
        preview_image: Any = None,
        ignore_size_limit: bool = False,
    ) -> None:
        """Report progress of the executing node (or ``node_id``); raises once interrupted."""
        _set_progress(value, max_value, node_id, preview_image)


class _ExecutionAsync:
    async def set_progress(
        self,
        value: float,
        max_value: float,
        node_id: str | None = None,
        preview_image: Any = None,
        ignore_size_limit: bool = False,
    ) -> None:
        _set_progress(value, max_value, node_id, preview_image)


class ComfyAPISync:
    def __init__(self) -> None:
        self.execution = _ExecutionSync()


class ComfyAPI:
    def __init__(self) -> None:
        self.execution = _ExecutionAsync()


__all__ = ["ComfyAPI", "ComfyAPISync"]
