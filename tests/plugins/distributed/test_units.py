"""Broker-free pieces of the distributed plugin: the optional dependency and the output files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kernel import StartupError
from kernel.settings import Settings
from plugins.distributed import broker, outputs
from plugins.distributed.protocol import FileBlob


def test_missing_aio_pika_is_a_clear_startup_error(make_kernel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)  # makes `import aio_pika` fail
    with pytest.raises(StartupError, match=r"pip install 'comfykernel\[distributed\]'"):
        make_kernel(plugins=["distributed"], extra={"broker": "amqp://127.0.0.1/"})
    # Without --broker the plugin needs nothing.
    make_kernel(plugins=["distributed"])


def test_front_prompts_get_the_high_priority() -> None:
    from kernel.queue import QueueItem

    assert broker.priority_of(QueueItem(number=-3, prompt_id="a", prompt={})) > 4
    assert broker.priority_of(QueueItem(number=3, prompt_id="b", prompt={})) <= 4


def test_password_is_hidden_in_messages() -> None:
    config = broker.BrokerConfig(url="amqp://user:s3cret@host:5672/vhost")
    assert "s3cret" not in config.safe_url and "user:***@host" in config.safe_url


def test_a_worker_cannot_write_outside_the_api_roots(tmp_path: Path) -> None:
    settings = Settings(base_directory=str(tmp_path / "base"))
    blobs = [
        FileBlob(type="output", subfolder="../..", filename="escape.txt", data=b"x"),
        FileBlob(type="output", subfolder="", filename="../escape2.txt", data=b"x"),
        FileBlob(type="input", subfolder="", filename="not-an-output.txt", data=b"x"),
        FileBlob(type="output", subfolder="ok", filename="fine.txt", data=b"fine"),
    ]
    outputs.store(blobs, settings, "tag", {})
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["base/output/ok/fine.txt"]


def test_colliding_names_are_renamed_and_rewritten(tmp_path: Path) -> None:
    settings = Settings(base_directory=str(tmp_path))
    renames: dict[Any, str] = {}
    outputs.store(
        [FileBlob(type="output", subfolder="", filename="a.png", data=b"one")], settings, "p1", renames
    )
    outputs.store(
        [FileBlob(type="output", subfolder="", filename="a.png", data=b"two")], settings, "p2", renames
    )
    assert renames == {("output", "", "a.png"): "a_p2.png"}
    ui = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
    outputs.rewrite(ui, renames)
    assert ui["images"][0]["filename"] == "a_p2.png"
    assert (tmp_path / "output" / "a.png").read_bytes() == b"one"
    assert (tmp_path / "output" / "a_p2.png").read_bytes() == b"two"


async def test_a_finish_whose_files_cannot_be_written_is_still_recorded_and_answered(
    make_kernel: Any,
) -> None:
    """An output the API server cannot write must not leave the worker waiting for its answer
    forever (its delivery unacked, the prompt never in history)."""
    from kernel.events import PromptFinished
    from kernel.queue import QueueItem
    from plugins.distributed.backend import BrokerQueue
    from plugins.distributed.coordinator import Coordinator
    from plugins.distributed.protocol import Finished, decode_decision, encode

    kernel = make_kernel(plugins=["distributed"])
    kernel.settings.output_path.mkdir(parents=True, exist_ok=True)
    (kernel.settings.output_path / "sub").write_text("a file where the worker's subfolder should be")
    finished: list[Any] = []
    kernel.bus.subscribe(lambda event: finished.append(event) if isinstance(event, PromptFinished) else None)
    replies: list[tuple[str, str]] = []

    class Exchange:
        async def publish(self, message: Any, routing_key: str) -> None:
            replies.append((routing_key, decode_decision(message.body).verdict))

    class Channel:
        default_exchange = Exchange()

    queue = BrokerQueue(kernel)
    coordinator = Coordinator(kernel, queue, broker.BrokerConfig(url="amqp://127.0.0.1/"))
    coordinator.channel = Channel()
    queue.put(QueueItem(number=0, prompt_id="p1", prompt={}))
    assert queue.claim(queue.pending["p1"], "a1", redelivered=False) == "run"
    blob = FileBlob(type="output", subfolder="sub", filename="x.png", data=b"png")
    status = {"status_str": "success", "completed": True, "messages": []}
    body = encode(
        Finished(prompt_id="p1", attempt="a1", reply_to="r", status=status, outputs={}, meta={}, files=[blob])
    )
    await coordinator._on_result(body)
    assert replies == [("r", "recorded")]
    assert [event.item.prompt_id for event in finished] == ["p1"]
