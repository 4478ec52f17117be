"""Streaming blake3: constant memory whatever the file size, cancellable between chunks."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import blake3

PREFIX = "blake3:"
CHUNK = 1 << 20
_HASH = re.compile(r"^blake3:[0-9a-f]{64}$")


class HashCancelled(Exception):
    """Hashing stopped because its cancel event was set."""


def is_hash(value: object) -> bool:
    """Is ``value`` exactly ``blake3:<64 lowercase hex>``?"""
    return isinstance(value, str) and _HASH.match(value) is not None


def normalize_hash(value: str) -> str | None:
    """Accept upper-case hex and surrounding blanks; None when it is not a blake3 identity."""
    candidate = value.strip()
    if candidate[: len(PREFIX)].lower() == PREFIX:
        candidate = PREFIX + candidate[len(PREFIX) :].lower()
    return candidate if is_hash(candidate) else None


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def identity(hasher: blake3.blake3) -> str:
    return PREFIX + hasher.hexdigest()


def hash_file(path: str | Path, cancel: threading.Event | None = None) -> tuple[str, int]:
    """``(blake3:<hex>, size)`` of a file; see ``hash_file_head``."""
    content_hash, size, _ = hash_file_head(path, cancel)
    return content_hash, size


def hash_file_head(
    path: str | Path, cancel: threading.Event | None = None, head_bytes: int = 64
) -> tuple[str, int, bytes]:
    """``(blake3:<hex>, size, first bytes)`` of a file, read in 1 MiB chunks.

    Memory stays at one chunk whatever the size. Run it off the event loop
    (``asyncio.to_thread``): blake3 releases the GIL on large updates, so the loop keeps
    serving while a big file hashes. ``cancel`` is checked between chunks.
    """
    hasher = new_hasher()
    size = 0
    head = b""
    with open(path, "rb", buffering=0) as f:
        first = f.read(CHUNK)
        head = first[:head_bytes]
        if len(first) < CHUNK:  # small files (most of them): one read, no buffer
            hasher.update(first)
            return identity(hasher), len(first), head
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        hasher.update(first)
        size = len(first)
        del first
        while True:
            if cancel is not None and cancel.is_set():
                raise HashCancelled(str(path))
            n = f.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return identity(hasher), size, head
