"""Per-prompt progress registry: ``progress`` / ``progress_state`` messages and preview frames.

One ``ProgressReporter`` lives for one prompt, so progress never leaks between prompts or
clients. Messages are addressed to the prompt's client and broadcast when it has none (the
reference's rule for progress). Preview images become ``PreviewFrame`` objects that the
WebSocket hub turns into a type-1 or type-4 binary frame per socket, depending on whether the
socket declared ``supports_preview_metadata``.

``progress_state`` lists every node of the prompt seen so far, so sending it on every node start
and finish made a long prompt's traffic quadratic (a 3,000-node chain: 9 million entries). It is
coalesced instead: a change goes out at once when no state went out lately, later changes wait
for the end of the window and go out merged (latest state wins), and whatever is waiting is
flushed before ``executed`` and the prompt's final message, so a client never sees stale state
next to them. The bytes of state frames are metered by a token bucket (``STATE_BYTES_PER_SECOND``,
bursts up to ``STATE_BURST_BYTES``): an ordinary prompt never runs short, so every flush goes out
as described, while a huge one (thousands of nodes, or of output nodes each flushing before its
``executed``) has its frames wait for their bytes. That keeps the bytes per node flat however long
or wide the prompt; only the prompt's final message always gets the current state first.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from kernel.builtin.ws_send import LatestFrame
from kernel.events import ServerMessage
from kernel.executor.graph import DynamicPrompt

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_FORMAT_CODES = {"JPEG": 1, "PNG": 2}
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
# Intermediate updates closer together than this are coalesced; first, last and previews never are.
THROTTLE_SECONDS = 0.05
# progress_state frames: at most one per this window (flushes before `executed` aside)...
STATE_MIN_INTERVAL = 0.02
# ...and at most this many bytes of them per second, in bursts of up to STATE_BURST_BYTES.
STATE_BYTES_PER_SECOND = 1_000_000
STATE_BURST_BYTES = 256 * 1024

# ``schedule(delay, callback)`` runs ``callback`` on the server loop after ``delay`` seconds;
# False when there is no loop to run it (then every state change is sent as it happens).
Scheduler = Callable[[float, Callable[[], None]], bool]


class PreviewFrame:
    """An encoded preview; ``frame_for(client_flags)`` gives the bytes for one socket."""

    __slots__ = ("image", "image_format", "metadata")

    def __init__(self, image: bytes, image_format: str, metadata: dict[str, Any]) -> None:
        self.image = image
        self.image_format = image_format
        self.metadata = metadata

    def frame_for(self, client_flags: dict[str, Any]) -> bytes:
        if client_flags.get("supports_preview_metadata"):
            meta = json.dumps({**self.metadata, "image_type": _MIME[self.image_format]}).encode()
            return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + self.image
        return struct.pack(">II", PREVIEW_IMAGE, _FORMAT_CODES[self.image_format]) + self.image


def encode_preview(preview: Any, max_size: int) -> tuple[bytes, str]:
    """Encode a PIL image, an ``(format, image, max_size)`` tuple or a float image tensor."""
    from PIL import Image, ImageOps

    image_format = "JPEG"
    size: int | None = max_size
    if isinstance(preview, tuple) and len(preview) == 3:
        # A tuple's own size wins, and None there means "as it is", as in the reference.
        image_format, preview, size = str(preview[0]).upper(), preview[1], preview[2]
    if not isinstance(preview, Image.Image):
        import numpy as np

        array = preview.detach().cpu().numpy() if hasattr(preview, "detach") else np.asarray(preview)
        if array.ndim == 4:
            array = array[0]
        array = np.clip(array * 255.0, 0, 255).astype(np.uint8)
        preview = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if image_format not in _FORMAT_CODES:
        image_format = "JPEG"
    if size is not None:
        # Fitted to the square either way, small previews enlarged too, as the reference sends them.
        preview = ImageOps.contain(preview, (int(size), int(size)), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if image_format == "JPEG":
        preview.convert("RGB").save(out, format="JPEG", quality=95)
    else:
        preview.save(out, format="PNG", compress_level=1)
    return out.getvalue(), image_format


_ENCODE = msgspec.json.Encoder().encode


class ProgressStateData(dict[str, Any]):
    """``progress_state`` data that also knows its own text frame.

    The message lists every node seen so far, so a long prompt would re-encode the same entries
    thousands of times; each entry is encoded once when it changes and frames are joined from
    those pieces. It is still a plain dict for every other bus subscriber.
    """

    def __init__(self, prompt_id: str, nodes: dict[str, Any], fragments: list[str], version: int = 0) -> None:
        super().__init__(prompt_id=prompt_id, nodes=nodes)
        self._fragments = fragments
        self._frame: str | None = None
        # Increases with every snapshot of one prompt's state (the hub keeps the newest).
        self.version = version

    def frame_for(self, client_flags: dict[str, Any]) -> str:
        if self._frame is None:
            # A LatestFrame: a socket still holding an older state of this prompt swaps it.
            self._frame = LatestFrame(
                '{"type":"progress_state","data":{"prompt_id":'
                + json.dumps(self["prompt_id"])
                + ',"nodes":{'
                + ",".join(self._fragments)
                + "}}}",
                key="progress_state:" + str(self["prompt_id"]),
                version=self.version,
            )
        return self._frame


class ProgressReporter:
    """Progress of the nodes of one prompt (implements ``kernel.progress.ProgressSink``)."""

    def __init__(
        self,
        prompt_id: str,
        client_id: str | None,
        dynprompt: DynamicPrompt,
        publish: Callable[[ServerMessage], None],
        is_interrupted: Callable[[], bool],
        preview_size: int = 512,
        schedule: Scheduler | None = None,
        publish_nowait: Callable[[ServerMessage], None] | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.dynprompt = dynprompt
        self.publish = publish
        self._is_interrupted = is_interrupted
        self.preview_size = preview_size
        # Entries are replaced, never mutated, so a published snapshot stays as it was sent.
        self.nodes: dict[str, dict[str, Any]] = {}
        self._fragments: dict[str, str] = {}
        self._last_sent: dict[str, float] = {}
        # State coalescing (see the module docstring). The lock orders snapshots taken on the
        # executor thread and on the server loop (a due flush): each is published while held,
        # through ``publish_nowait``, which never waits for the loop.
        self._schedule = schedule
        self._publish_nowait = publish_nowait or publish
        self._lock = threading.Lock()
        self._bytes = 0  # total length of the fragments: the next frame's size
        self._dirty = False
        self._armed = False  # a due flush is scheduled
        self._sent_at = float("-inf")
        self._tokens = float(STATE_BURST_BYTES)  # the byte bucket (negative: in debt)
        self._refilled = time.monotonic()
        self._version = 0

    def is_interrupted(self) -> bool:
        return self._is_interrupted()

    def _entry(self, node_id: str, value: float, max_value: float, state: str) -> dict[str, Any]:
        dp = self.dynprompt
        return {
            "value": value,
            "max": max_value,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": dp.get_display_node_id(node_id),
            "parent_node_id": dp.get_parent_node_id(node_id),
            "real_node_id": dp.get_real_node_id(node_id),
        }

    def _send(self, type_: str, data: Any) -> None:
        self.publish(ServerMessage(type=type_, data=data, sid=self.client_id, broadcast=True))

    def _set(self, node_id: str, entry: dict[str, Any]) -> None:
        # msgspec: json.dumps of the entry was the executor's largest single cost per node.
        fragment = (_ENCODE(node_id) + b":" + _ENCODE(entry)).decode()
        with self._lock:
            self.nodes[node_id] = entry
            old = self._fragments.get(node_id)
            self._bytes += len(fragment) - (len(old) if old is not None else -1)  # +1: the comma
            self._fragments[node_id] = fragment
            self._dirty = True

    def _publish_state_locked(self, now: float) -> None:
        self._version += 1
        data = ProgressStateData(
            self.prompt_id, dict(self.nodes), list(self._fragments.values()), self._version
        )
        self._dirty = False
        self._sent_at = now
        self._tokens -= self._bytes
        self._publish_nowait(
            ServerMessage(type="progress_state", data=data, sid=self.client_id, broadcast=True)
        )

    def _wait(self, now: float, forced: bool) -> float:
        """Seconds until the waiting state may go out (0: now)."""
        self._tokens = min(
            float(STATE_BURST_BYTES), self._tokens + (now - self._refilled) * STATE_BYTES_PER_SECOND
        )
        self._refilled = now
        # A frame bigger than the bucket goes out once the bucket is full, and leaves a debt.
        wait = max(0.0, (min(self._bytes, STATE_BURST_BYTES) - self._tokens) / STATE_BYTES_PER_SECOND)
        if not forced:
            wait = max(wait, self._sent_at + STATE_MIN_INTERVAL - now)
        return wait

    def _send_or_arm(self, forced: bool) -> None:
        """With the lock held: publish the waiting state now if allowed, else arm a due flush."""
        now = time.monotonic()
        wait = self._wait(now, forced)
        if wait > 0 and self._schedule is not None:
            if not self._armed:
                self._armed = self._schedule(wait, self._flush_due)
            if self._armed:
                return
        self._publish_state_locked(now)

    def _send_state(self) -> None:
        """The state changed: send it now, or when the current window ends."""
        with self._lock:
            self._send_or_arm(forced=False)

    def _flush_due(self) -> None:
        """On the server loop, when a window ends: send what changed during it."""
        with self._lock:
            self._armed = False
            if self._dirty:
                self._send_or_arm(forced=False)

    def flush(self, final: bool = False) -> None:
        """Send the waiting state before ``executed`` (when the byte bucket allows) or before the
        prompt's final message (``final``: always)."""
        with self._lock:
            if not self._dirty:
                return
            if final:
                self._publish_state_locked(time.monotonic())
            else:
                self._send_or_arm(forced=True)

    def start(self, node_id: str) -> None:
        self._set(node_id, self._entry(node_id, 0, 1, "running"))
        self._last_sent.pop(node_id, None)
        self._send_state()

    def finish(self, node_id: str) -> None:
        entry = self.nodes.get(node_id)  # only this thread replaces entries: no lock to read
        max_value = entry["max"] if entry is not None else 1
        self._set(node_id, self._entry(node_id, max_value, max_value, "finished"))
        self._send_state()

    def update(self, node_id: str, value: float, max_value: float, preview: Any = None) -> None:
        now = time.monotonic()
        last = self._last_sent.get(node_id)
        final = max_value and value >= max_value
        if preview is None and last is not None and not final and now - last < THROTTLE_SECONDS:
            return
        self._last_sent[node_id] = now
        state = self.nodes.get(node_id, {}).get("state", "running")
        self._set(node_id, self._entry(node_id, value, max_value, state))
        self._send(
            "progress", {"value": value, "max": max_value, "prompt_id": self.prompt_id, "node": node_id}
        )
        self._send_state()
        if preview is not None:
            image, image_format = encode_preview(preview, self.preview_size)
            dp = self.dynprompt
            metadata = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": dp.get_display_node_id(node_id),
                "parent_node_id": dp.get_parent_node_id(node_id),
                "real_node_id": dp.get_real_node_id(node_id),
            }
            self.publish(
                ServerMessage(
                    type="preview",
                    data=PreviewFrame(image, image_format, metadata),
                    sid=self.client_id,
                    broadcast=True,
                    binary_type=PREVIEW_IMAGE,
                )
            )
