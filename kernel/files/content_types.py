"""Which Content-Type a stored file is served with, and which types must never render inline."""

from __future__ import annotations

import mimetypes
from urllib.parse import quote

# Pinned so answers don't depend on the host's /etc/mime.types.
_KNOWN: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".m4a": "audio/mp4",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".json": "application/json",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".xml": "application/xml",
    ".xhtml": "application/xhtml+xml",
}

# Types a browser would execute or render with script access: never served inline.
_DANGEROUS = frozenset(
    {
        "text/html",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/ecmascript",
        "application/ecmascript",
        "text/css",
        "image/svg+xml",
        "message/rfc822",
        "text/xml",
        "application/xml",
    }
)
SVG = "image/svg+xml"


def guess_type(filename: str) -> str:
    ext = filename[filename.rfind(".") :].lower() if "." in filename else ""
    return _KNOWN.get(ext) or mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"


def is_dangerous(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct in _DANGEROUS or ct.endswith("/xml") or ct.endswith("+xml")


def disposition(filename: str, *, attachment: bool = False) -> str:
    """``filename="<name>"`` (``\\`` and ``"`` escaped), plus RFC 5987 ``filename*`` for non-ASCII."""
    ascii_name = filename.encode("ascii", "replace").decode("ascii")
    escaped = ascii_name.replace("\\", "\\\\").replace('"', '\\"')
    value = f'filename="{escaped}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return f"attachment; {value}" if attachment else value
