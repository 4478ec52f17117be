"""Plugin ``distributed``: RabbitMQ queue backend for ``comfykernel run`` and ``comfykernel worker``.

Inert unless ``--broker`` is given (or ``COMFYKERNEL_BROKER``), so ``--plugins all`` is safe.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kernel import StashKey, hookimpl
from plugins.distributed import broker
from plugins.distributed.backend import BrokerQueue
from plugins.distributed.coordinator import Coordinator, RemoteInterrupts
from plugins.distributed.worker import (
    ROLE_KEY,
    WORKER,
    WorkerAgent,
    WorkerQueue,
    add_broker_options,
    add_worker_command,
)

if TYPE_CHECKING:
    from aiohttp import web

    from kernel import Kernel

CONFIG = StashKey[broker.BrokerConfig]()
COORDINATOR = StashKey[Coordinator]()
AGENT = StashKey[WorkerAgent]()


def _is_worker(kernel: Kernel) -> bool:
    return kernel.settings.extra.get(ROLE_KEY) == WORKER


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    add_broker_options(parser, required=False)


@hookimpl
def register_commands(subparsers: Any) -> None:
    add_worker_command(subparsers)


@hookimpl
def configure(kernel: Kernel) -> None:
    config = broker.config_from(kernel.settings)
    if config is not None:
        broker.require_aio_pika()  # fail at startup, clearly, when the extra is not installed
        kernel.stash[CONFIG] = config


@hookimpl
def provide_queue_backend(kernel: Kernel) -> Any:
    if CONFIG not in kernel.stash:
        return None
    if _is_worker(kernel):
        return WorkerQueue()
    return BrokerQueue(kernel)


@hookimpl
async def startup(kernel: Kernel, app: web.Application) -> None:
    config = kernel.stash.get(CONFIG, None)
    if config is None:
        return
    if _is_worker(kernel):
        assert isinstance(kernel.queue, WorkerQueue)
        agent = kernel.stash[AGENT] = WorkerAgent(kernel, config, kernel.queue)
        await agent.start()
        return
    assert isinstance(kernel.queue, BrokerQueue)
    coordinator = kernel.stash[COORDINATOR] = Coordinator(kernel, kernel.queue, config)
    await coordinator.start()
    if kernel.executor is not None:
        kernel.executor = RemoteInterrupts(kernel.executor, coordinator)


@hookimpl
async def shutdown(kernel: Kernel) -> None:
    agent = kernel.stash.get(AGENT, None)
    if agent is not None:
        await agent.stop()
    coordinator = kernel.stash.get(COORDINATOR, None)
    if coordinator is not None:
        await coordinator.stop()


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    agent = kernel.stash.get(AGENT, None)
    if agent is not None:
        agent.relay.on_event(event)
