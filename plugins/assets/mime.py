"""MIME types: sniffed from the first bytes, else from the name; client overrides are checked."""

from __future__ import annotations

import re

from kernel.files.content_types import guess_type

OCTET_STREAM = "application/octet-stream"
SNIFF_BYTES = 64
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")

# Magic numbers win over the extension: an upload called "x.png" that is really a JPEG is a JPEG.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"%PDF-", 0, "application/pdf"),
    (b"glTF", 0, "model/gltf-binary"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
    (b"PK\x03\x04", 0, "application/zip"),
)


def sniff(head: bytes, name: str) -> str:
    """The type of content starting with ``head`` and called ``name``."""
    for magic, offset, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        return "video/mp4" if not name.lower().endswith((".m4a", ".mov")) else guess_type(name)
    if name.lower().endswith(".safetensors"):
        return "application/safetensors"
    return guess_type(name) if "." in name else OCTET_STREAM


def valid_mime(value: str) -> bool:
    return _VALID.match(value) is not None
