"""Model previews: a sibling image or one embedded in safetensors metadata, re-encoded as WebP."""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from pathlib import Path

from PIL import Image

from kernel.paths import is_within

IMAGE_EXTENSIONS = (".webp", ".png", ".jpg", ".jpeg", ".gif", ".bmp")
# Headers bigger than this are not read for an embedded cover image.
MAX_HEADER_BYTES = 8 * 1024 * 1024
DATA_URL_PREFIX = "data:image/"


class PreviewEscapes(Exception):
    """A preview candidate resolves outside the model folder (a symlink pointing out)."""


def _sibling_candidates(model: Path) -> list[Path]:
    stem = model.with_suffix("") if model.suffix else model
    names = [f"{stem.name}{ext}" for ext in IMAGE_EXTENSIONS]
    names += [f"{stem.name}.preview{ext}" for ext in IMAGE_EXTENSIONS]
    return [model.parent / name for name in names]


def read_safetensors_metadata(path: Path, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file; ``{}`` when absent, unreadable or too large."""
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                return {}
            (length,) = struct.unpack("<Q", raw_len)
            if length > max_bytes:
                return {}
            header = json.loads(fh.read(length))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _embedded_images(metadata: dict[str, str]) -> list[bytes]:
    images: list[bytes] = []
    covers = metadata.get("ssmd_cover_images")
    if isinstance(covers, str):
        try:
            decoded = json.loads(covers)
        except ValueError:
            decoded = []
        for item in decoded if isinstance(decoded, list) else []:
            if isinstance(item, str):
                try:
                    images.append(base64.b64decode(item, validate=False))
                except (binascii.Error, ValueError):
                    continue
    thumbnail = metadata.get("modelspec.thumbnail")
    if isinstance(thumbnail, str) and thumbnail.startswith(DATA_URL_PREFIX) and ";base64," in thumbnail:
        try:
            images.append(base64.b64decode(thumbnail.split(";base64,", 1)[1]))
        except (binascii.Error, ValueError):
            pass
    return images


def find_preview(root: Path, model: Path) -> Path | bytes | None:
    """The first preview of ``model``: sibling images first, then embedded ones.

    Raises PreviewEscapes when the chosen sibling's real path is outside ``root``.
    """
    if not model.parent.is_dir():
        return None
    for candidate in _sibling_candidates(model):
        if candidate.is_file():
            if not is_within(root, candidate):
                raise PreviewEscapes(str(candidate))
            return candidate
    if model.suffix.lower() == ".safetensors" and model.is_file():
        embedded = _embedded_images(read_safetensors_metadata(model))
        if embedded:
            return embedded[0]
    return None


def to_webp(source: Path | bytes) -> bytes | None:
    """Re-encode an image as WebP; None when it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
            out = io.BytesIO()
            img.save(out, format="WEBP")
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
