"""What travels over the broker: queue names and the msgpack messages between workers and the API.

Worker → API (one durable results queue, so the API sees a worker's messages in order):
``Claim`` before running a delivery, ``Relayed`` for every bus event, ``Finished`` at the end.
API → worker (the worker's private reply queue): ``Decision`` answering a claim or a finish.
API → every worker (a fanout exchange): ``Control`` (interrupts).
"""

from __future__ import annotations

from typing import Any

import msgspec

from kernel.queue import QueueItem


class Names(msgspec.Struct, frozen=True):
    """Queue and exchange names under one prefix (tests use a unique prefix each)."""

    prefix: str

    @property
    def prompts(self) -> str:
        return f"{self.prefix}.prompts"

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"


class FileBlob(msgspec.Struct, frozen=True):
    """An output file a worker wrote, sent so the API server's ``/view`` can serve it."""

    type: str  # "output" or "temp"
    subfolder: str
    filename: str
    data: bytes


class Claim(msgspec.Struct, tag="claim", tag_field="msg"):
    prompt_id: str
    attempt: str
    worker: str
    redelivered: bool
    reply_to: str
    item: QueueItem


class Relayed(msgspec.Struct, tag="event", tag_field="msg"):
    """A bus event of the worker: ``kind`` is ``message`` (a ServerMessage) or ``started``."""

    prompt_id: str
    attempt: str
    kind: str
    type: str = ""
    data: Any = None
    sid: str | None = None
    broadcast: bool = False
    binary_type: int | None = None
    # A preview frame: the encoded image, its format and metadata (data is then None).
    preview: tuple[bytes, str, dict[str, Any]] | None = None
    files: list[FileBlob] = msgspec.field(default_factory=list)


class Finished(msgspec.Struct, tag="finished", tag_field="msg"):
    prompt_id: str
    attempt: str
    reply_to: str
    status: dict[str, Any]
    outputs: dict[str, Any]
    meta: dict[str, Any]
    files: list[FileBlob] = msgspec.field(default_factory=list)


ToApi = Claim | Relayed | Finished


class Decision(msgspec.Struct):
    """``run`` or ``skip`` for a claim; ``recorded`` for a finish."""

    verdict: str


class Control(msgspec.Struct):
    """``interrupt`` with a prompt id, or ``None`` for every running prompt."""

    action: str
    prompt_id: str | None = None


_encoder = msgspec.msgpack.Encoder()
_to_api = msgspec.msgpack.Decoder(ToApi)
_decision = msgspec.msgpack.Decoder(Decision)
_control = msgspec.msgpack.Decoder(Control)
_item = msgspec.msgpack.Decoder(QueueItem)


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decode_to_api(body: bytes) -> Claim | Relayed | Finished:
    return _to_api.decode(body)


def decode_decision(body: bytes) -> Decision:
    return _decision.decode(body)


def decode_control(body: bytes) -> Control:
    return _control.decode(body)


def decode_item(body: bytes) -> QueueItem:
    return _item.decode(body)
