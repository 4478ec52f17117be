"""ComfyUI's ``server`` module: ``PromptServer.instance`` as a thin face of the running kernel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from comfykernel_compat_runtime import kernel as _kernel
from comfykernel_compat_runtime import state as _state

from kernel.events import ServerMessage
from kernel.progress import get_executing_context

log = logging.getLogger("comfykernel.compat")


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class _InstanceDescriptor:
    """``PromptServer.instance`` is always the server of the kernel the shims are bound to."""

    def __get__(self, obj: Any, owner: type) -> PromptServer:
        return _state().prompt_server


class PromptServer:
    instance = _InstanceDescriptor()

    def __init__(self, kernel: Any, routes: web.RouteTableDef) -> None:
        self._kernel = kernel
        self.routes = routes
        self.app: web.Application | None = None
        self.on_prompt_handlers: list[Callable[[dict[str, Any]], Any]] = []
        self.supports = ["custom_nodes_from_web"]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._kernel.loop

    @property
    def client_id(self) -> str | None:
        """The client of the prompt now running (the reference keeps this on the server)."""
        executor = self._kernel.executor
        current = getattr(executor, "current", None)
        if current is None:
            return None
        return (current.extra_data or {}).get("client_id")

    @property
    def last_prompt_id(self) -> str | None:
        context = get_executing_context()
        return context.prompt_id if context is not None else None

    @property
    def last_node_id(self) -> str | None:
        context = get_executing_context()
        return context.node_id if context is not None else None

    @property
    def number(self) -> int:
        return 0

    def add_on_prompt_handler(self, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.on_prompt_handlers.append(handler)

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send a WebSocket message from any thread; without ``sid`` every client gets it."""
        if isinstance(event, int):
            if not isinstance(data, bytes | bytearray):
                # The reference encodes preview tuples here; packs should use ProgressBar previews.
                log.warning(
                    "send_sync(%r) with %s dropped: binary events need bytes", event, type(data).__name__
                )
                return
            message = ServerMessage(
                type=str(event), data=bytes(data), sid=sid, broadcast=sid is None, binary_type=event
            )
        else:
            message = ServerMessage(type=event, data=data, sid=sid, broadcast=sid is None)
        self._kernel.bus.publish_threadsafe(message)

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def queue_updated(self) -> None:
        """The kernel announces queue changes itself; kept for packs that call it."""


def get_kernel() -> Any:
    return _kernel()
