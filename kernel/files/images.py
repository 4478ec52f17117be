"""Pillow work for the file routes: mask compositing, previews and channel extraction.

Everything here is sync and CPU-bound; handlers run it in a worker thread.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

PREVIEW_FORMATS = ("webp", "jpeg")
DEFAULT_QUALITY = 90
# Errors that mean "this file is not an image we can handle" (a 4xx, not a crash).
IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    ValueError,
    SyntaxError,  # raised by some Pillow plugins on corrupt headers
)


class ImageProblem(ValueError):
    """The request is well-formed but the image cannot be used (message is client-safe)."""


def parse_preview(preview: str, channel: str) -> tuple[str, int]:
    """``"webp;90"`` → (format, quality). Unknown formats, or a channel with alpha, give webp."""
    parts = preview.split(";")
    fmt = parts[0].strip().lower()
    if fmt not in PREVIEW_FORMATS or "a" in channel:
        fmt = "webp"
    quality = DEFAULT_QUALITY
    if re.fullmatch(r"[0-9]{1,3}", parts[-1].strip()):
        quality = max(1, min(100, int(parts[-1])))
    return fmt, quality


def preview_bytes(path: Path, fmt: str, quality: int, channel: str) -> bytes:
    with Image.open(path) as img:
        out = img
        if fmt == "jpeg" or channel == "rgb":
            out = img.convert("RGB")
        elif img.mode not in ("RGB", "RGBA", "L", "LA"):
            out = img.convert("RGBA")
        buffer = io.BytesIO()
        out.save(buffer, format=fmt.upper(), quality=quality)
        return buffer.getvalue()


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def channel_png(path: Path, channel: str) -> bytes:
    """``rgb``: the image without alpha; ``a``: black RGB carrying the source alpha (255 if none)."""
    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            alpha = img.convert("RGBA").getchannel("A") if _has_alpha(img) else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size, (0, 0, 0, 0))
            out.putalpha(alpha)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
        return buffer.getvalue()


def composite_mask(original: Path, mask_data: bytes) -> bytes:
    """The original as RGBA PNG with its alpha replaced by the mask's; PNG text chunks kept."""
    with Image.open(original) as src:
        text = dict(getattr(src, "text", {}) or {})
        rgba = src.convert("RGBA")
    with Image.open(io.BytesIO(mask_data)) as mask_img:
        alpha = mask_img.convert("RGBA").getchannel("A")
    if alpha.size != rgba.size:
        raise ImageProblem(
            f"mask size {alpha.size[0]}x{alpha.size[1]} does not match the original's "
            f"{rgba.size[0]}x{rgba.size[1]}"
        )
    rgba.putalpha(alpha)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()
