"""Essential plugin ``ws``: GET /ws and the fan-out of bus messages to sockets.

Each socket has a send queue drained by its own task, so one slow client never blocks the bus or
the others. The queue is bounded in frames and in bytes (``ws_send``), and a client that stops
reading until it fills is dropped with a log line; a ``progress_state`` still waiting in it is
replaced by the newer one instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from kernel import hookimpl
from kernel.app import KERNEL_KEY
from kernel.builtin.ws_send import SealingFrame, SendQueue
from kernel.events import (
    ClientDisconnected,
    PromptFinished,
    PromptQueued,
    PromptStarted,
    QueueChanged,
    ServerMessage,
)
from kernel.identity import Principal, owner_of, principal_of
from kernel.stash import StashKey

if TYPE_CHECKING:
    from kernel.app import Kernel

log = logging.getLogger("comfykernel.ws")

# Frames a socket may have waiting. The byte bound (ws_send.SEND_QUEUE_BYTES) is what keeps memory
# in check; this one only caps bookkeeping, high enough that a prompt with thousands of output
# nodes (a few small frames each) does not drop a reader that is merely a little behind.
SEND_QUEUE_LIMIT = 16384
# Queue-size ``status`` broadcasts are throttled: under load every queued, started and finished
# prompt changes the count, and each change would cost one frame on every socket. A change goes
# out at once when none went out in the last window; changes inside the window are merged and go
# out at its end, or earlier to a socket that is about to get another message (so each socket's
# order of messages stays the reference's, with consecutive statuses merged into the latest).
STATUS_COALESCE_SECONDS = 0.02
# A coalesced progress_state waiting in a socket's queue is not replaced past these: the client
# reads the state that was current when one of them was sent before reading it.
# How long a shutdown waits for sockets to finish their closing handshake.
CLOSE_WAIT_SECONDS = 1.0
SEALING_TYPES = frozenset({"executed", "execution_success", "execution_error", "execution_interrupted"})
# Prompt owners remembered for filtering messages by owner (only used with an authenticated
# principal): enough for every prompt a busy queue holds, bounded so memory stays flat.
OWNERS_KEPT = 20_000


@dataclass
class Client:
    sid: str
    ws: web.WebSocketResponse
    queue: SendQueue = field(default_factory=lambda: SendQueue(SEND_QUEUE_LIMIT))
    feature_flags: dict[str, Any] = field(default_factory=dict)
    sender: asyncio.Task[None] | None = None
    # The hub's status version this socket has been sent (see SocketHub._queue_changed).
    status_seen: int = 0
    # Who opened it (the identify hook); None without an authentication plugin.
    principal: Principal | None = None


class SocketHub:
    """The sockets of one server, by sid."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.clients: dict[str, Client] = {}
        # Close tasks of dropped clients, held until done (the loop keeps only weak references).
        self._closing: set[asyncio.Task[Any]] = set()
        self.status_version = 0
        self._status_frame = ""
        self._status_timer: asyncio.TimerHandle | None = None
        self._status_sent_at = float("-inf")  # loop time of the last broadcast
        # prompt id -> the user it was queued as; the prompts running now, latest last.
        self.owners: OrderedDict[str, str] = OrderedDict()
        self.running: list[str] = []

    def _targets(self, sid: str | None) -> Iterable[Client]:
        if sid is None:
            return list(self.clients.values())
        # A prompt's client_id comes from the request body as any JSON value; a non-string one
        # (an object is unhashable) names no socket.
        client = self.clients.get(sid) if isinstance(sid, str) else None
        return [client] if client is not None else []

    def _enqueue(self, client: Client, frame: str | bytes) -> bool:
        if client.queue.put(frame):
            return True
        log.warning(
            "dropping WebSocket client %s: it is not reading fast enough (%d frames, %d bytes waiting)",
            client.sid,
            len(client.queue),
            client.queue.bytes,
        )
        self.drop(client)
        return False

    def _catch_up(self, client: Client) -> bool:
        """Send ``client`` the latest queue status if it has not had it; False when dropped."""
        if client.status_seen == self.status_version:
            return True
        client.status_seen = self.status_version
        return self._enqueue(client, self._status_frame)

    def _put(self, client: Client, frame: str | bytes) -> None:
        if self._catch_up(client):
            self._enqueue(client, frame)

    def send(self, sid: str | None, frame: str | bytes) -> None:
        for client in self._targets(sid):
            self._put(client, frame)

    def send_json(self, sid: str | None, type_: str, data: Any) -> None:
        self.send(sid, json.dumps({"type": type_, "data": data}))

    def forget(self, client: Client) -> None:
        """Stop sending to ``client``; tell the bus when it was the current socket of its sid."""
        if client.sender is not None:
            client.sender.cancel()
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
            self.kernel.bus.publish(ClientDisconnected(sid=client.sid))

    def drop(self, client: Client) -> None:
        self.forget(client)
        task = asyncio.ensure_future(client.ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def flush_status(self) -> None:
        """Send the latest queue status now to every socket that has not had it."""
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        loop = self.kernel.loop
        if loop is not None:
            self._status_sent_at = loop.time()
        for client in list(self.clients.values()):
            self._catch_up(client)

    def _queue_changed(self, remaining: int) -> None:
        self.status_version += 1
        self._status_frame = json.dumps(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}
        )
        if self._status_timer is not None:
            return  # the window's merged broadcast is already due
        loop = self.kernel.loop
        try:
            on_server_loop = loop is not None and asyncio.get_running_loop() is loop
        except RuntimeError:
            on_server_loop = False
        if loop is None or not on_server_loop:
            # Published outside the running server's loop: no timer to batch with there.
            self.flush_status()
            return
        wait = self._status_sent_at + STATUS_COALESCE_SECONDS - loop.time()
        if wait <= 0:
            self.flush_status()
        else:
            self._status_timer = loop.call_later(wait, self.flush_status)

    # --- owners (messages about a prompt reach only sockets whose principal may see it) ---

    def _track(self, event: Any) -> None:
        if isinstance(event, PromptQueued):
            self._remember(event.item.prompt_id, owner_of(event.item.extra_data))
        elif isinstance(event, PromptStarted):
            self.running.append(event.prompt_id)
        elif isinstance(event, PromptFinished):
            if event.item.prompt_id in self.running:
                self.running.remove(event.item.prompt_id)

    def _remember(self, prompt_id: str, owner: str) -> str:
        self.owners[prompt_id] = owner
        while len(self.owners) > OWNERS_KEPT:
            self.owners.popitem(last=False)
        return owner

    def _owner(self, prompt_id: str) -> str:
        """The user ``prompt_id`` was queued as; "" (no user: admins only) when nobody knows."""
        owner = self.owners.get(prompt_id)
        if owner is None:  # queued before this hub saw it (recovered at startup, a broker)
            running, pending = self.kernel.queue.snapshot()
            found = [owner_of(i.extra_data) for i in (*running, *pending) if i.prompt_id == prompt_id]
            owner = self._remember(prompt_id, found[0] if found else "")
        return owner

    def _message_owner(self, event: ServerMessage) -> str | None:
        """The owner of the prompt a message is about; None for messages about no prompt."""
        data = event.data
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else getattr(data, "prompt_id", None)
        if prompt_id is None:
            metadata = getattr(data, "metadata", None)
            prompt_id = metadata.get("prompt_id") if isinstance(metadata, dict) else None
        if prompt_id is None and isinstance(data, bytes | bytearray) and event.sid is None and self.running:
            # A node's binary frame (progress text) names no prompt: it is the running one's.
            prompt_id = self.running[-1]
        return self._owner(prompt_id) if isinstance(prompt_id, str) else None

    def _recipients(self, event: ServerMessage) -> list[Client]:
        clients = list(self._targets(event.sid))
        if not any(c.principal is not None for c in clients):
            return clients  # no authentication plugin: the reference's addressing alone
        owner = self._message_owner(event)
        if owner is None:
            return clients
        return [c for c in clients if c.principal is None or c.principal.may_access(owner)]

    def on_bus(self, event: Any) -> None:
        if isinstance(event, ServerMessage):
            if event.sid is None and not event.broadcast:
                return
            frame_for = getattr(event.data, "frame_for", None)
            if frame_for is not None:
                # Binary data whose encoding depends on each socket's feature flags (previews).
                for client in self._recipients(event):
                    self._put(client, frame_for(client.feature_flags))
                return
            if isinstance(event.data, bytes | bytearray):
                frame: str | bytes = struct.pack(">I", event.binary_type or 0) + bytes(event.data)
            else:
                frame = json.dumps({"type": event.type, "data": event.data})
                if event.type in SEALING_TYPES:
                    frame = SealingFrame(frame)
            for client in self._recipients(event):
                self._put(client, frame)
        elif isinstance(event, QueueChanged):
            self._queue_changed(event.queue_remaining)
        else:
            self._track(event)

    async def close_all(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        for client in list(self.clients.values()):
            self.drop(client)
        # The closing handshakes run together and bounded: a client that never answers its close
        # frame must not hold up the shutdown (the runner cuts its connection afterwards).
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=CLOSE_WAIT_SECONDS)


HUB = StashKey[SocketHub]()


async def _drain(client: Client) -> None:
    while True:
        frame = await client.queue.get()
        if frame is None or client.ws.closed:
            return
        if isinstance(frame, bytes):
            await client.ws.send_bytes(frame)
        else:
            await client.ws.send_str(frame)


routes = web.RouteTableDef()


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    kernel = request.app[KERNEL_KEY]
    hub = kernel.stash[HUB]
    # The identify hook's answer; an authentication plugin has already refused anonymous upgrades.
    principal = principal_of(request)
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=kernel.settings.max_upload_bytes)
    await ws.prepare(request)
    sid = request.query.get("clientId") or uuid.uuid4().hex
    held = hub.clients.get(sid)
    if principal is not None and held is not None and held.principal != principal:
        # Another user's live clientId: taking it over would steal (or cut off) their messages.
        sid = uuid.uuid4().hex
    previous = hub.clients.pop(sid, None)
    if previous is not None:
        # A reconnect with the same clientId takes over the id and the old socket is closed (a
        # duplicated tab would otherwise stay connected, silently getting nothing).
        hub.drop(previous)
    # Its first message carries the current count: nothing pending is owed to it.
    client = Client(sid, ws, status_seen=hub.status_version, principal=principal)
    hub.clients[sid] = client
    client.sender = asyncio.create_task(_drain(client))
    hub.send_json(
        sid, "status", {"status": {"exec_info": {"queue_remaining": kernel.queue.remaining()}}, "sid": sid}
    )
    if principal is None or _may_rejoin(kernel, principal, sid):
        for replay in kernel.stash.get(RECONNECT_REPLAY, ()):
            for type_, data in replay(sid):
                hub.send_json(sid, type_, data)
    first = True
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and first:
                first = False
                try:
                    payload = json.loads(msg.data)
                except ValueError:
                    log.warning("ignoring invalid JSON from WebSocket client %s", sid)
                    continue
                if isinstance(payload, dict) and payload.get("type") == "feature_flags":
                    data = payload.get("data")
                    client.feature_flags = data if isinstance(data, dict) else {}
                    hub.send_json(sid, "feature_flags", kernel.feature_flags)
            elif msg.type == WSMsgType.ERROR:
                log.debug("WebSocket %s closed with %s", sid, ws.exception())
    finally:
        hub.forget(client)
    return ws


def _may_rejoin(kernel: Kernel, principal: Principal, sid: str) -> bool:
    """Only the owner (or an admin) learns where a running prompt addressed to ``sid`` stands."""
    running, _ = kernel.queue.snapshot()
    return all(
        principal.may_access(owner_of(item.extra_data))
        for item in running
        if item.extra_data.get("client_id") == sid
    )


# Callables ``replay(sid) -> [(type, data), ...]`` run when a client (re)connects: the executor
# registers one so a client reconnecting mid-prompt learns which node is executing.
RECONNECT_REPLAY = StashKey[list[Any]]()


@hookimpl
def configure(kernel: Kernel) -> None:
    kernel.stash[HUB] = SocketHub(kernel)
    kernel.stash[RECONNECT_REPLAY] = []
    kernel.bus.subscribe(kernel.stash[HUB].on_bus)


@hookimpl
def register_routes(kernel: Kernel) -> Iterable[web.AbstractRouteDef]:
    return routes


@hookimpl
def startup(kernel: Kernel, app: web.Application) -> None:
    # Close sockets as soon as the listeners stop, before aiohttp waits for open connections
    # to finish (a WebSocket never would).
    async def close_sockets(app: web.Application) -> None:
        await kernel.stash[HUB].close_all()

    app.on_shutdown.append(close_sockets)
