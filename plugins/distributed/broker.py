"""The RabbitMQ side: settings, the lazy aio-pika import, connecting and declaring the topology.

aio-pika is an optional dependency (``pip install 'comfykernel[distributed]'``), imported only
when ``--broker`` is given, so a default install never needs it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec

from kernel import StartupError
from plugins.distributed.protocol import Names

if TYPE_CHECKING:
    from kernel.queue import QueueItem
    from kernel.settings import Settings

log = logging.getLogger("comfykernel.distributed")

DEFAULT_PREFIX = "comfykernel"
DEFAULT_DELIVERY_LIMIT = 3
CONNECT_TIMEOUT_S = 10.0
# RabbitMQ 4 quorum queues know two priorities: above 4 is "high", the rest "normal".
HIGH_PRIORITY = 9
NORMAL_PRIORITY = 0


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    prefix: str = DEFAULT_PREFIX
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    # Workers write into the API server's output directory themselves (a shared file system).
    shared_output: bool = False
    consumer_timeout_ms: int | None = None

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.url)


def config_from(settings: Settings) -> BrokerConfig | None:
    """The broker settings from ``--broker`` and friends; ``None`` when no broker is configured."""
    extra = settings.extra
    url = extra.get("broker")
    if not url:
        return None
    limit = int(extra.get("delivery_limit") or DEFAULT_DELIVERY_LIMIT)
    if limit < 1:
        raise StartupError(f"--delivery-limit must be at least 1, not {limit}")
    timeout = extra.get("consumer_timeout_ms")
    return BrokerConfig(
        url=str(url),
        prefix=str(extra.get("broker_prefix") or DEFAULT_PREFIX),
        delivery_limit=limit,
        shared_output=bool(extra.get("shared_output")),
        consumer_timeout_ms=int(timeout) if timeout else None,
    )


def require_aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:
        raise StartupError(
            "the distributed plugin needs aio-pika for --broker: pip install 'comfykernel[distributed]'"
        ) from exc
    return aio_pika


async def connect(config: BrokerConfig) -> Any:
    """A robust (self-reconnecting) connection; a ``StartupError`` when the broker is unreachable."""
    aio_pika = require_aio_pika()
    try:
        return await asyncio.wait_for(aio_pika.connect_robust(config.url), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise StartupError(
            f"cannot reach the RabbitMQ broker at {config.safe_url}: {exc or type(exc).__name__}"
        ) from exc


def broker_version(connection: Any) -> tuple[int, ...]:
    raw = connection.transport.connection.server_properties.get("version", b"0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


def prompts_arguments(config: BrokerConfig, version: tuple[int, ...]) -> dict[str, Any]:
    """Arguments of the work queue: quorum, delivery limit, dead-lettering, consumer timeout."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        # After this many failed deliveries (its worker died each time) the prompt is dead-lettered
        # and the API server records it as failed.
        "x-delivery-limit": config.delivery_limit,
        "x-dead-letter-exchange": config.names.dead,
    }
    if config.consumer_timeout_ms:
        if version >= (3, 12):
            args["x-consumer-timeout"] = config.consumer_timeout_ms
        else:
            log.warning(
                "RabbitMQ %s has no per-queue consumer timeout; set consumer_timeout in rabbitmq.conf",
                ".".join(map(str, version)),
            )
    return args


async def declare(channel: Any, config: BrokerConfig, version: tuple[int, ...]) -> dict[str, Any]:
    """Declare (idempotently) every queue and exchange; returns them by role."""
    aio_pika = require_aio_pika()
    names = config.names
    dead_exchange = await channel.declare_exchange(names.dead, aio_pika.ExchangeType.FANOUT, durable=True)
    dead = await channel.declare_queue(names.dead, durable=True, arguments={"x-queue-type": "quorum"})
    await dead.bind(dead_exchange)
    try:
        prompts = await channel.declare_queue(
            names.prompts, durable=True, arguments=prompts_arguments(config, version)
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise StartupError(
            f"the RabbitMQ queue {names.prompts} exists with other settings ({exc}); give the API "
            "server and every worker the same --delivery-limit and --consumer-timeout-ms, or delete "
            "the queue while it is empty"
        ) from exc
    results = await channel.declare_queue(names.results, durable=True, arguments={"x-queue-type": "quorum"})
    control = await channel.declare_exchange(names.control, aio_pika.ExchangeType.FANOUT, durable=True)
    return {"prompts": prompts, "results": results, "dead": dead, "control": control}


def priority_of(item: QueueItem) -> int:
    """``front`` submissions (negative numbers) jump ahead where the broker supports priorities."""
    return HIGH_PRIORITY if isinstance(item.number, int | float) and item.number < 0 else NORMAL_PRIORITY


def message(body: bytes, **properties: Any) -> Any:
    aio_pika = require_aio_pika()
    return aio_pika.Message(
        body,
        content_type="application/msgpack",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **properties,
    )
