"""``comfykernel worker``: a kernel without an HTTP API that runs prompts from RabbitMQ.

Each delivery (prefetch 1) is first *claimed* from the API server, which refuses duplicates and
prompts deleted from ``/queue``; a granted prompt goes to the worker's own executor through
``WorkerQueue``, its events flow back through the relay, and the delivery is acked only after the
API server has recorded the result. A worker that dies leaves its delivery unacked, so RabbitMQ
hands the prompt to another worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue as thread_queue
import signal
import socket
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kernel.queue import QueueItem
from plugins.distributed import broker
from plugins.distributed.backend import RUN
from plugins.distributed.events_relay import Attempt, Relay
from plugins.distributed.protocol import Claim, decode_control, decode_decision, decode_item, encode

if TYPE_CHECKING:
    from kernel import Kernel
    from plugins.distributed.broker import BrokerConfig
    from plugins.distributed.protocol import ToApi

log = logging.getLogger("comfykernel.distributed")

ROLE_KEY = "distributed_role"
WORKER = "worker"


class WorkerQueue:
    """The worker kernel's ``kernel.queue``: at most one granted prompt at a time (prefetch 1)."""

    def __init__(self) -> None:
        self._items: thread_queue.Queue[QueueItem] = thread_queue.Queue()
        self.current: QueueItem | None = None

    def next_number(self, front: bool = False) -> int:
        return 0

    def advance_counter(self, past: float) -> None:
        return None

    def put(self, item: QueueItem) -> None:
        self._items.put(item)

    def get(self, timeout: float | None = None) -> QueueItem | None:
        try:
            item = self._items.get(timeout=timeout)
        except thread_queue.Empty:
            return None
        self.current = item
        return item

    def task_done(self, prompt_id: str) -> None:
        if self.current is not None and self.current.prompt_id == prompt_id:
            self.current = None

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        current = self.current
        return ([current] if current is not None else []), []

    def is_pending(self, prompt_id: str) -> bool:
        return False

    def is_running(self, prompt_id: str) -> bool:
        current = self.current
        return current is not None and current.prompt_id == prompt_id

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        return []

    def clear(self) -> list[str]:
        return []

    def remaining(self) -> int:
        return self._items.qsize() + (1 if self.current is not None else 0)


class WorkerAgent:
    """The worker's broker connection: deliveries, claims, replies and control messages."""

    def __init__(self, kernel: Kernel, config: BrokerConfig, queue: WorkerQueue) -> None:
        self.kernel = kernel
        self.config = config
        self.queue = queue
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.connection: Any = None
        self.channel: Any = None
        self.reply_queue: Any = None
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._consumer_tag: str | None = None
        self._prompts: Any = None
        self.relay = Relay(kernel, self._publish, self._ask, lambda: self.reply_queue.name)

    async def start(self) -> None:
        self.connection = await broker.connect(self.config)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=1)
        version = broker.broker_version(self.connection)
        queues = await broker.declare(self.channel, self.config, version)
        self.reply_queue = await self.channel.declare_queue("", exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        control = await self.channel.declare_queue("", exclusive=True, auto_delete=True)
        await control.bind(queues["control"])
        await control.consume(self._on_control, no_ack=True)
        self.relay.start()
        self._prompts = queues["prompts"]
        self._consumer_tag = await self._prompts.consume(self._on_delivery)
        log.info("distributed: worker %s consuming %s", self.name, self.config.names.prompts)

    async def stop(self) -> None:
        # Unacked deliveries go back to the queue when the connection closes: a prompt cut short
        # by a worker shutdown runs again elsewhere instead of being recorded as interrupted.
        await self.relay.stop()
        if self._prompts is not None and self._consumer_tag is not None:
            try:
                await self._prompts.cancel(self._consumer_tag)
            except Exception:
                log.debug("distributed: cancelling the consumer failed", exc_info=True)
        for future in self._waiting.values():
            future.cancel()
        if self.connection is not None:
            await self.connection.close()

    async def _publish(self, message: ToApi) -> None:
        await self.channel.default_exchange.publish(
            broker.message(encode(message)), routing_key=self.config.names.results
        )

    async def _ask(self, message: ToApi, attempt: str) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[attempt] = future
        try:
            await self._publish(message)
            return await future
        finally:
            self._waiting.pop(attempt, None)

    async def _on_reply(self, message: Any) -> None:
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(decode_decision(message.body).verdict)

    async def _on_control(self, message: Any) -> None:
        control = decode_control(message.body)
        if control.action == "interrupt" and self.kernel.executor is not None:
            if self.kernel.executor.interrupt(control.prompt_id):
                log.info("distributed: interrupted %s", control.prompt_id or "the running prompt")

    async def _on_delivery(self, delivery: Any) -> None:
        try:
            item = decode_item(delivery.body)
        except Exception:
            log.exception("distributed: dropping an unreadable prompt message")
            await delivery.reject(requeue=False)
            return
        attempt = Attempt(item.prompt_id, uuid.uuid4().hex, delivery)
        claim = Claim(
            prompt_id=item.prompt_id,
            attempt=attempt.attempt,
            worker=self.name,
            redelivered=bool(delivery.redelivered),
            reply_to=self.reply_queue.name,
            item=item,
        )
        verdict = await self._ask(claim, attempt.attempt)
        if verdict != RUN:
            log.info("distributed: skipping %s (%s)", item.prompt_id, verdict)
            await delivery.ack()
            return
        self.relay.begin(attempt)
        self.queue.put(item)


def add_broker_options(parser: argparse.ArgumentParser, required: bool) -> None:
    add = parser.add_argument
    add(
        "--broker",
        default=None,
        required=required and not os.environ.get("COMFYKERNEL_BROKER"),
        metavar="amqp://USER:PASS@HOST/VHOST",
        help="RabbitMQ URL: run prompts on workers (env COMFYKERNEL_BROKER)",
    )
    add("--broker-prefix", default=None, metavar="NAME", help="queue and exchange name prefix")
    add(
        "--delivery-limit",
        type=int,
        default=None,
        metavar="N",
        help=f"redeliveries before a prompt that kills its worker fails (default {broker.DEFAULT_DELIVERY_LIMIT})",
    )
    add(
        "--shared-output",
        action="store_true",
        help="workers write into the API server's output directory (a shared file system)",
    )
    add(
        "--consumer-timeout-ms",
        type=int,
        default=None,
        metavar="MS",
        help="per-queue consumer timeout (RabbitMQ >= 3.12; older brokers: rabbitmq.conf)",
    )


def add_worker_command(subparsers: Any) -> None:
    from kernel.cli import add_selection_options, add_server_options

    parser = subparsers.add_parser("worker", help="run prompts from RabbitMQ (no HTTP API)")
    add_selection_options(parser)
    add_server_options(parser)
    add_broker_options(parser, required=True)
    parser.set_defaults(func=cmd_worker)


def worker_settings(args: argparse.Namespace) -> Any:
    from kernel.hooks import Hooks
    from kernel.plugins import build_plugin_manager
    from kernel.settings import ENV_PREFIX, Settings, plugin_selection, settings_from_namespace

    for dest in ("broker", "broker_prefix"):
        if getattr(args, dest, None) is None:
            setattr(args, dest, os.environ.get(ENV_PREFIX + dest.upper()))
    settings = settings_from_namespace(args, set(Settings.__struct_fields__))
    if settings.plugins is None or "history" not in settings.plugins:
        # The API server keeps the record; a worker's own history would be a stray copy.
        settings.disabled.append("history")
    # Plugins read their own options from settings.extra: give them their defaults.
    selected, disabled = plugin_selection(args.plugins, args.disable)
    pm, _ = build_plugin_manager(selected, disabled)
    defaults = argparse.ArgumentParser(add_help=False)
    Hooks(pm).add_options(defaults)
    for key, value in vars(defaults.parse_args([])).items():
        settings.extra.setdefault(key, value)
    settings.extra[ROLE_KEY] = WORKER
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    from kernel import Kernel

    settings = worker_settings(args)
    logging.basicConfig(
        level=settings.verbose.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve_worker(Kernel(settings)))


async def serve_worker(kernel: Kernel) -> int:
    """Run the kernel's startup hooks (executor, broker) without a listening socket."""
    from aiohttp import web

    from kernel import build_app

    runner = web.AppRunner(build_app(kernel), handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    print(f"comfykernel worker ready (pid {os.getpid()})", flush=True)
    await stop.wait()
    log.info("worker shutting down")
    await runner.cleanup()
    return 0
