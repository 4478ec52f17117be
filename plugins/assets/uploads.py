"""Receiving ``POST /api/assets``: the multipart body is streamed to a temp file and hashed on the way.

Nothing is buffered whole in memory, so an upload of any size costs one chunk of RAM. The size
limit (``--max-upload-size``) is enforced while streaming because a chunked body carries no
Content-Length for the kernel's middleware to check.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import BodyPartReader, web

from plugins.assets import hashing, mime
from plugins.assets.errors import AssetError, bad_request

_CHUNK = 1 << 16
TEMP_PREFIX = ".assets-upload-"
_MAX_FIELD = 1 << 20


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int
    hash: str
    head: bytes

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass
class Received:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: ReceivedFile | None = None

    def text(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


def _too_large(limit: int) -> AssetError:
    return AssetError(
        413, "FILE_TOO_LARGE", f"Request body too large: the limit is {limit} bytes", limit=limit
    )


def remove_stale_temps(temp_dir: Path) -> None:
    """Delete upload temp files a killed process left in ``temp_dir`` (call before serving)."""
    if not temp_dir.is_dir():
        return
    for path in temp_dir.glob(f"{TEMP_PREFIX}*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()


async def receive(request: web.Request, temp_dir: Path, limit: int) -> Received:
    try:
        reader = await request.multipart()
    except Exception:  # not multipart at all: aiohttp raises assorted types
        raise bad_request("INVALID_BODY", "Expected a multipart/form-data body with a 'file' part") from None
    received = Received()
    total = 0
    try:
        while True:
            try:
                part = await reader.next()
            except Exception as exc:
                raise bad_request("INVALID_BODY", f"Malformed multipart body: {exc}") from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise bad_request("INVALID_BODY", "Nested multipart bodies are not supported")
            name = part.name or ""
            if part.filename is not None and name == "file":
                if received.file is not None:
                    raise bad_request("INVALID_BODY", "Send exactly one 'file' part")
                received.file = await _stream_file(part, temp_dir, limit, total)
                total += received.file.size
                continue
            data = bytearray()
            while chunk := await part.read_chunk(_CHUNK):
                data += chunk
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit)
                if len(data) > _MAX_FIELD:
                    raise bad_request("INVALID_BODY", f"Field {name!r} is too long", field=name)
            if part.filename is not None:
                raise bad_request("INVALID_BODY", f"Field {name!r} must be text, not a file", field=name)
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request("INVALID_BODY", f"Field {name!r} is not UTF-8 text", field=name) from None
            received.fields.setdefault(name, []).append(text)
    except BaseException:
        if received.file is not None:
            received.file.discard()
        raise
    return received


async def _stream_file(part: BodyPartReader, temp_dir: Path, limit: int, before: int) -> ReceivedFile:
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=temp_dir)
    path = Path(tmp)
    hasher = hashing.new_hasher()
    head = b""
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if before + size > limit:
                    raise _too_large(limit)
                if len(head) < mime.SNIFF_BYTES:
                    head += chunk[: mime.SNIFF_BYTES - len(head)]
                hasher.update(chunk)
                out.write(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    filename = os.path.basename((part.filename or "").replace("\\", "/"))
    return ReceivedFile(path=path, filename=filename, size=size, hash=hashing.identity(hasher), head=head)
