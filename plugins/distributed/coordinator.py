"""The API server's end of the broker: publish prompts, answer claims, record what workers report.

Everything a worker says arrives on one durable results queue and is handled in order on the
event loop: claims are answered, relayed events are published on the API server's bus (so
WebSocket clients and the history plugin see them as if the prompt ran here) and a finish is
published as ``PromptFinished`` (the history plugin writes it synchronously) *before* the worker
is told it may ack. Dead-lettered prompts (delivery limit reached) are recorded as failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished, PromptStarted, ServerMessage
from kernel.executor.progress import PreviewFrame
from plugins.distributed import broker, outputs
from plugins.distributed.backend import BrokerQueue
from plugins.distributed.protocol import (
    Claim,
    Control,
    Decision,
    Finished,
    Relayed,
    decode_item,
    decode_to_api,
    encode,
)

if TYPE_CHECKING:
    from kernel import Kernel
    from kernel.queue import QueueItem
    from plugins.distributed.broker import BrokerConfig

log = logging.getLogger("comfykernel.distributed")

RESULTS_PREFETCH = 64
SHUTDOWN_FLUSH_SECONDS = 5.0


class Coordinator:
    def __init__(self, kernel: Kernel, queue: BrokerQueue, config: BrokerConfig) -> None:
        self.kernel = kernel
        self.queue = queue
        self.config = config
        self.connection: Any = None
        self.channel: Any = None
        self.exchanges: dict[str, Any] = {}
        self._outbox: deque[tuple[str, str, bytes, dict[str, Any]]] = deque()
        self._outbox_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Output renames per prompt, so later mentions of a renamed file match.
        self._renames: dict[str, dict[outputs.Key, str]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.connection = await broker.connect(self.config)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=RESULTS_PREFETCH)
        version = broker.broker_version(self.connection)
        queues = await broker.declare(self.channel, self.config, version)
        self.exchanges = {"": self.channel.default_exchange, "control": queues["control"]}
        log.info(
            "distributed: API server on RabbitMQ %s at %s (prefix %s)",
            ".".join(map(str, version)),
            self.config.safe_url,
            self.config.prefix,
        )
        self.queue.publish = self.publish_prompt
        for item in self.queue.unpublished:
            self.publish_prompt(item)
        self.queue.unpublished.clear()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="distributed-send"),
            asyncio.create_task(
                self._consume(queues["results"], self._on_result), name="distributed-results"
            ),
            asyncio.create_task(self._consume(queues["dead"], self._on_dead), name="distributed-dead"),
        ]

    async def stop(self) -> None:
        # A prompt accepted just before shutdown may still sit in the outbox: send it first, so
        # an accepted prompt reaches the broker (bounded, in case the broker is gone).
        await self._flush(SHUTDOWN_FLUSH_SECONDS)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with self._outbox_lock:
            left = len(self._outbox)
        if left:
            log.warning("distributed: %d message(s) not sent to the broker before shutdown", left)
        if self.connection is not None:
            await self.connection.close()

    # --- sending (any thread; one task publishes, in order) ---------------------------------

    def _send(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        with self._outbox_lock:
            self._outbox.append((exchange, routing_key, body, props))
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def publish_prompt(self, item: QueueItem) -> None:
        self._send(
            "",
            self.config.names.prompts,
            encode(item),
            priority=broker.priority_of(item),
            message_id=item.prompt_id,
        )

    def control(self, message: Control) -> None:
        self._send("control", "", encode(message))

    async def _flush(self, timeout: float) -> None:
        if not self._tasks or self._wake is None:
            return
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._outbox_lock:
                if not self._outbox:
                    return
            await asyncio.sleep(0.01)

    async def _send_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                with self._outbox_lock:
                    if not self._outbox:
                        break
                    exchange, key, body, props = self._outbox[0]
                try:
                    # Publisher confirms: returns once the broker has the message.
                    await self.exchanges[exchange].publish(broker.message(body, **props), routing_key=key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("distributed: publishing failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                with self._outbox_lock:
                    self._outbox.popleft()

    # --- receiving ------------------------------------------------------------------------

    async def _consume(self, queue: Any, handle: Any) -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                try:
                    await handle(message.body)
                except Exception:
                    # A message we cannot handle must not block the queue for good.
                    log.exception("distributed: dropped an unreadable message from %s", queue.name)
                await message.ack()

    async def _reply(self, reply_to: str, attempt: str, verdict: str) -> None:
        await self.channel.default_exchange.publish(
            broker.message(encode(Decision(verdict=verdict)), correlation_id=attempt), routing_key=reply_to
        )

    async def _on_result(self, body: bytes) -> None:
        msg = decode_to_api(body)
        if isinstance(msg, Claim):
            verdict = self.queue.claim(msg.item, msg.attempt, msg.redelivered)
            log.debug("distributed: %s claims %s: %s", msg.worker, msg.prompt_id, verdict)
            await self._reply(msg.reply_to, msg.attempt, verdict)
        elif isinstance(msg, Relayed):
            if self.queue.accepts(msg.prompt_id, msg.attempt):
                await self._republish(msg)
        elif isinstance(msg, Finished):
            item = self.queue.finish(msg.prompt_id, msg.attempt)
            if item is not None:
                renames = self._renames.pop(msg.prompt_id, {})
                await self._store_files(msg.files, msg.prompt_id, renames)
                outputs.rewrite(msg.outputs, renames)
                # The history plugin records it synchronously here: only then may the worker ack.
                self.kernel.bus.publish(
                    PromptFinished(item=item, status=msg.status, outputs=msg.outputs, meta=msg.meta)
                )
            await self._reply(msg.reply_to, msg.attempt, "recorded")

    async def _store_files(self, files: list[Any], prompt_id: str, renames: dict[outputs.Key, str]) -> None:
        if not files or self.config.shared_output:
            return
        try:
            # Off the event loop that serves every client; results are handled one at a time,
            # so nothing else touches ``renames`` meanwhile.
            await asyncio.to_thread(outputs.store, files, self.kernel.settings, prompt_id[:8], renames)
        except OSError:
            # The prompt is still recorded and its worker answered; only these files are missing.
            log.exception("distributed: could not store the output files of %s", prompt_id)

    async def _republish(self, msg: Relayed) -> None:
        bus = self.kernel.bus
        if msg.kind == "started":
            bus.publish(PromptStarted(prompt_id=msg.prompt_id))
            return
        renames = self._renames.setdefault(msg.prompt_id, {})
        await self._store_files(msg.files, msg.prompt_id, renames)
        data: Any = msg.data
        if msg.preview is not None:
            data = PreviewFrame(*msg.preview)
        elif isinstance(data, dict):
            outputs.rewrite(data, renames)
        bus.publish(
            ServerMessage(
                type=msg.type, data=data, sid=msg.sid, broadcast=msg.broadcast, binary_type=msg.binary_type
            )
        )
        if msg.type == "executing" and isinstance(data, dict) and data.get("node") is None:
            self._renames.pop(msg.prompt_id, None)

    async def _on_dead(self, body: bytes) -> None:
        """The broker gave up on a prompt: its worker died on every delivery."""
        item = decode_item(body)
        if not self.queue.fail(item):
            return
        limit = self.config.delivery_limit
        now = int(time.time() * 1000)
        error = {
            "prompt_id": item.prompt_id,
            "node_id": "",
            "node_type": "",
            "executed": [],
            "exception_message": (
                f"The prompt was handed to a worker {limit + 1} times and its worker stopped each "
                "time (RabbitMQ delivery limit reached); it will not be retried."
            ),
            "exception_type": "WorkerLostError",
            "traceback": [],
            "current_inputs": {},
            "current_outputs": {},
            "timestamp": now,
        }
        status = {
            "status_str": "error",
            "completed": False,
            "messages": [["execution_error", error]],
        }
        sid = item.extra_data.get("client_id")
        bus = self.kernel.bus
        bus.publish(ServerMessage(type="execution_error", data=error, sid=sid))
        bus.publish(PromptFinished(item=item, status=status, outputs={}, meta={}))
        bus.publish(
            ServerMessage(type="executing", data={"node": None, "prompt_id": item.prompt_id}, sid=sid)
        )
        log.error("distributed: prompt %s failed: delivery limit %d reached", item.prompt_id, limit)


class RemoteInterrupts:
    """Stands in for ``kernel.executor`` on the API server so interrupts reach the workers.

    ``/interrupt`` and job cancellation call ``kernel.executor.interrupt(prompt_id)``; the prompt
    runs on some worker, so the request goes out on the control exchange (every worker hears it,
    only the one running that prompt acts). Everything else is the local executor's.
    """

    def __init__(self, local: Any, coordinator: Coordinator) -> None:
        self._local = local
        self._coordinator = coordinator

    def interrupt(self, prompt_id: str | None = None) -> bool:
        queue = self._coordinator.queue
        if prompt_id is None:
            self._coordinator.control(Control(action="interrupt"))
            self._local.interrupt(None)
            return queue.remaining() > 0
        if queue.is_running(prompt_id):
            self._coordinator.control(Control(action="interrupt", prompt_id=prompt_id))
            return True
        return bool(self._local.interrupt(prompt_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)
