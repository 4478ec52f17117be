"""ComfyUI's ``server`` module: ``PromptServer.instance`` as a thin face of the running kernel.

Packs use ``routes`` (collected by the compat plugin's ``register_routes``), ``app``,
``send_sync``/``send``/``send_json`` (published on the kernel's bus, so they reach the WebSocket
clients), ``client_id``/``last_node_id``/``last_prompt_id`` of the prompt now running,
``add_on_prompt_handler`` and ``prompt_queue`` (the kernel's queue under the reference's
``PromptQueue`` methods). ``server.uuid`` and ``server.web`` are module attributes packs read, as
in the reference.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import uuid  # the reference module has ``uuid``; packs call ``server.uuid.uuid4()``
from collections.abc import Callable
from typing import Any

from aiohttp import web
from comfykernel_compat_runtime import kernel as _kernel
from comfykernel_compat_runtime import state as _state

from kernel.events import PromptQueued, ServerMessage
from kernel.progress import get_executing_context
from kernel.queue import QueueItem

log = logging.getLogger("comfykernel.compat")

__all__ = ["BinaryEventTypes", "PromptServer", "uuid", "web"]


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


_IMAGE_FORMATS = {"JPEG": 1, "PNG": 2, "WEBP": 3}


def encode_preview(data: Any) -> bytes | None:
    """The payload of a preview frame for ``(format, PIL image, max_size)`` (the reference's tuple)."""
    if not isinstance(data, tuple | list) or len(data) < 2:
        return None
    image_type, image = data[0], data[1]
    max_size = data[2] if len(data) > 2 else None
    fmt = str(image_type).upper()
    if fmt not in _IMAGE_FORMATS or not hasattr(image, "save"):
        return None
    if max_size is not None and hasattr(image, "thumbnail"):
        image = image.copy()
        image.thumbnail((max_size, max_size))
    out = io.BytesIO()
    image.save(out, format=fmt, quality=95) if fmt != "PNG" else image.save(out, format=fmt)
    return struct.pack(">I", _IMAGE_FORMATS[fmt]) + out.getvalue()


class PromptQueueView:
    """``PromptServer.instance.prompt_queue``: the kernel's queue with the reference's methods.

    Items are the reference's tuples ``(number, prompt_id, prompt, extra_data, outputs_to_execute,
    sensitive)``; a prompt ``put`` here runs like one posted to ``/prompt`` (it is not validated
    again: the reference does not either).
    """

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel

    @staticmethod
    def _as_tuple(item: QueueItem) -> tuple[Any, ...]:
        return (
            item.number,
            item.prompt_id,
            item.prompt,
            item.extra_data,
            item.outputs_to_execute,
            item.sensitive,
        )

    @property
    def currently_running(self) -> dict[int, tuple[Any, ...]]:
        running, _ = self._kernel.queue.snapshot()
        return {index: self._as_tuple(item) for index, item in enumerate(running)}

    @property
    def queue(self) -> list[tuple[Any, ...]]:
        _, pending = self._kernel.queue.snapshot()
        return [self._as_tuple(item) for item in pending]

    def put(self, item: tuple[Any, ...] | list[Any]) -> None:
        number, prompt_id, prompt, extra_data, outputs = item[:5]
        queued = QueueItem(
            number=number,
            prompt_id=str(prompt_id),
            prompt=prompt,
            extra_data=dict(extra_data or {}),
            outputs_to_execute=[str(o) for o in outputs],
            sensitive=dict(item[5]) if len(item) > 5 and item[5] else {},
        )
        # From a node (the executor thread) or a route: PromptQueued lets history record it first.
        self._kernel.bus.publish_threadsafe(PromptQueued(item=queued))
        self._kernel.queue.put(queued)

    def get_current_queue(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(running, pending) as lists of item tuples."""
        running, pending = self._kernel.queue.snapshot()
        return [self._as_tuple(i) for i in running], [self._as_tuple(i) for i in pending]

    get_current_queue_volatile = get_current_queue

    def get_tasks_remaining(self) -> int:
        return int(self._kernel.queue.remaining())

    def wipe_queue(self) -> None:
        self._kernel.queue.clear()

    def delete_queue_item(self, function: Callable[[tuple[Any, ...]], bool]) -> bool:
        """Remove the first pending item ``function`` accepts; True when one was removed."""
        _, pending = self._kernel.queue.snapshot()
        for item in pending:
            if function(self._as_tuple(item)):
                return bool(self._kernel.queue.delete([item.prompt_id]))
        return False

    def set_flag(self, name: str, data: Any) -> None:
        """The reference's ``unload_models`` / ``free_memory`` requests, passed to ``/free``'s hook."""
        if name in ("unload_models", "free_memory"):
            self._kernel.hooks.on_free(
                self._kernel, unload_models=name == "unload_models" and bool(data), free_memory=bool(data)
            )


class _PendingRouter:
    """``app.router`` before the server's application exists: routes go to the pack route table."""

    def __init__(self, routes: web.RouteTableDef) -> None:
        self._routes = routes

    def add_route(self, method: str, path: str, handler: Any, **kwargs: Any) -> None:
        self._routes.route(method, path, **kwargs)(handler)

    def add_get(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("GET", path, handler, **kwargs)

    def add_post(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("POST", path, handler, **kwargs)

    def add_put(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("PUT", path, handler, **kwargs)

    def add_delete(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("DELETE", path, handler, **kwargs)

    def add_static(self, prefix: str, path: Any, **kwargs: Any) -> None:
        self._routes.static(prefix, path, **kwargs)


class _PendingApp:
    """``PromptServer.instance.app`` while packs import, before the aiohttp application is built.

    In the reference the application exists before any pack loads, and packs add routes to it at
    import time (``app.add_routes([web.static(...)])``, ``app.router.add_route(...)``). Here those
    routes join the pack route table, which the server mounts when it builds its application.
    """

    def __init__(self, routes: web.RouteTableDef) -> None:
        self._routes = routes
        self.router = _PendingRouter(routes)

    def add_routes(self, routes: Any) -> None:
        for route in routes:
            # RouteTableDef keeps its definitions in a list; custom AbstractRouteDef subclasses
            # (a pack's own static route class) can only be added to it as they are.
            self._routes._items.append(route)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"PromptServer.instance.app.{name} is not available while custom nodes are imported; "
            "the aiohttp application is built after them"
        )


class _InstanceDescriptor:
    """``PromptServer.instance`` is always the server of the kernel the shims are bound to."""

    def __get__(self, obj: Any, owner: type) -> PromptServer:
        return _state().prompt_server


class PromptServer:
    instance = _InstanceDescriptor()

    def __init__(self, kernel: Any, routes: web.RouteTableDef) -> None:
        self._kernel = kernel
        self.routes = routes
        self._app: web.Application | None = None
        self._pending_app = _PendingApp(routes)
        self.on_prompt_handlers: list[Callable[[dict[str, Any]], Any]] = []
        self.supports = ["custom_nodes_from_web"]
        self.prompt_queue = PromptQueueView(kernel)
        # The reference's submission counter; VideoHelperSuite reads and bumps it to requeue.
        self.number = 0

    @property
    def app(self) -> Any:
        """The aiohttp application once the server runs; before that, a stand-in taking routes."""
        return self._app if self._app is not None else self._pending_app

    @app.setter
    def app(self, value: web.Application | None) -> None:
        self._app = value

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
    def sockets(self) -> dict[str, Any]:
        """The connected WebSocket clients by client id (read-only here)."""
        from kernel.builtin.ws import HUB

        hub = self._kernel.stash.get(HUB, None)
        return dict(hub.clients) if hub is not None else {}

    def add_on_prompt_handler(self, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.on_prompt_handlers.append(handler)

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send a WebSocket message from any thread; without ``sid`` every client gets it."""
        if isinstance(event, int):
            if event in (BinaryEventTypes.PREVIEW_IMAGE, BinaryEventTypes.UNENCODED_PREVIEW_IMAGE):
                encoded = encode_preview(data)
                if encoded is not None:
                    event, data = BinaryEventTypes.PREVIEW_IMAGE, encoded
            if not isinstance(data, bytes | bytearray):
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

    def get_queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}


def get_kernel() -> Any:
    return _kernel()
