"""Worker side: the worker kernel's bus events, in order, over the broker to the API server.

Every event of the prompt being run (``PromptStarted``, each ``ServerMessage`` including
previews, and ``PromptFinished``) becomes a message on the results queue, tagged with the
delivery attempt, with the output files it names attached. After sending the finish it waits
until the API server has recorded it, then acks the prompt's delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished, PromptStarted, ServerMessage
from plugins.distributed import outputs
from plugins.distributed.protocol import Finished, Relayed

if TYPE_CHECKING:
    from kernel import Kernel
    from plugins.distributed.protocol import ToApi

log = logging.getLogger("comfykernel.distributed")


class Attempt:
    """One delivery of one prompt to this worker."""

    def __init__(self, prompt_id: str, attempt: str, delivery: Any) -> None:
        self.prompt_id = prompt_id
        self.attempt = attempt
        self.delivery = delivery
        self.sent_files: set[outputs.Key] = set()
        self.finished = False


class Relay:
    def __init__(
        self,
        kernel: Kernel,
        publish: Callable[[ToApi], Awaitable[None]],
        ask: Callable[[ToApi, str], Awaitable[str]],
        reply_to: Callable[[], str],
    ) -> None:
        self.kernel = kernel
        self.publish = publish
        self.ask = ask
        self.reply_to = reply_to
        self.current: Attempt | None = None
        self._by_prompt: dict[str, Attempt] = {}
        self._outgoing: asyncio.Queue[tuple[Attempt, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._send_loop(), name="distributed-relay")

    async def stop(self) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def begin(self, attempt: Attempt) -> None:
        self.current = attempt
        # Only the latest attempt per prompt is kept: late events of an older one are its own.
        self._by_prompt = {attempt.prompt_id: attempt}

    def on_event(self, event: Any) -> None:
        """Bus subscriber (loop thread): queue the event for the attempt it belongs to."""
        if self.closing:
            return
        attempt = self.current
        if isinstance(event, PromptStarted | PromptFinished):
            pid = event.prompt_id if isinstance(event, PromptStarted) else event.item.prompt_id
            attempt = self._by_prompt.get(pid)
        elif isinstance(event, ServerMessage):
            data = event.data
            pid = data.get("prompt_id") if isinstance(data, dict) else None
            if pid is not None:
                attempt = self._by_prompt.get(pid)
        else:
            return
        if attempt is not None:
            self._outgoing.put_nowait((attempt, event))

    async def _send_loop(self) -> None:
        while True:
            attempt, event = await self._outgoing.get()
            try:
                await self._send(attempt, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("distributed: relaying %s failed", type(event).__name__)

    async def _send(self, attempt: Attempt, event: Any) -> None:
        settings = self.kernel.settings
        shared = bool(settings.extra.get("shared_output"))
        if isinstance(event, PromptStarted):
            await self.publish(Relayed(prompt_id=attempt.prompt_id, attempt=attempt.attempt, kind="started"))
        elif isinstance(event, ServerMessage):
            await self.publish(self._relayed(attempt, event, shared))
        elif isinstance(event, PromptFinished):
            files = [] if shared else outputs.collect(event.outputs, settings, attempt.sent_files)
            finished = Finished(
                prompt_id=attempt.prompt_id,
                attempt=attempt.attempt,
                reply_to=self.reply_to(),
                status=event.status,
                outputs=event.outputs,
                meta=event.meta,
                files=files,
            )
            # Ack only once the API server has the result in its record.
            await self.ask(finished, attempt.attempt)
            attempt.finished = True
            await attempt.delivery.ack()
            if self.current is attempt:
                self.current = None

    def _relayed(self, attempt: Attempt, event: ServerMessage, shared: bool) -> Relayed:
        data = event.data
        preview = None
        frame_for = getattr(data, "frame_for", None)
        if hasattr(data, "image") and hasattr(data, "image_format"):
            preview = (bytes(data.image), str(data.image_format), dict(data.metadata))
            data = None
        elif isinstance(data, dict):
            data = dict(data)  # progress_state data is a dict subclass with its own framing
        elif frame_for is not None:
            data = None
        files: list[Any] = []
        if event.type == "executed" and isinstance(data, dict) and not shared:
            files = outputs.collect(data.get("output"), self.kernel.settings, attempt.sent_files)
        return Relayed(
            prompt_id=attempt.prompt_id,
            attempt=attempt.attempt,
            kind="message",
            type=event.type,
            data=data,
            sid=event.sid,
            broadcast=event.broadcast,
            binary_type=event.binary_type,
            preview=preview,
            files=files,
        )
