"""Encoding for the saving nodes beyond SaveImage: animated PNG / WEBP metadata, single PNG
(8 or 16 bits) and OpenEXR files, and the transfer functions an EXR's linear light needs.

The metadata goes where the reference puts it, so readers of its files read ours: the prompt
and workflow of an animated PNG in private ``comf`` chunks after the image data, of an animated
WEBP in the EXIF Model / Make tags, of a single PNG in ``tEXt`` chunks right after ``IHDR``, of
an EXR in ``string`` header attributes. No torch at import time (the node modules' rule).
"""

from __future__ import annotations

import json
import struct
import zlib
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXR_MAGIC = b"\x76\x2f\x31\x01"
# EXIF tags the reference writes the metadata to: Model holds the prompt, Make and the tags
# below it hold the extra_pnginfo entries, one each.
_EXIF_MODEL = 0x0110
_EXIF_MAKE = 0x010F

# (format, bit depth, has alpha) -> (array scale, numpy dtype name, frame format, encoder format)
_ENCODINGS: dict[tuple[str, str, bool], tuple[float, str, str, str]] = {
    ("png", "8-bit", False): (255.0, "uint8", "rgb24", "rgb24"),
    ("png", "8-bit", True): (255.0, "uint8", "rgba", "rgba"),
    ("png", "16-bit", False): (65535.0, "uint16", "rgb48le", "rgb48be"),
    ("png", "16-bit", True): (65535.0, "uint16", "rgba64le", "rgba64be"),
    ("exr", "32-bit float", False): (1.0, "float32", "gbrpf32le", "gbrpf32le"),
    ("exr", "32-bit float", True): (1.0, "float32", "gbrapf32le", "gbrapf32le"),
}

# CIE xy of the red, green, blue primaries and the white point (D65 for both).
_PRIMARIES = {
    "Rec.709": (0.6400, 0.3300, 0.3000, 0.6000, 0.1500, 0.0600, 0.3127, 0.3290),
    "Rec.2020": (0.7080, 0.2920, 0.1700, 0.7970, 0.1310, 0.0460, 0.3127, 0.3290),
}
# The gamut the written (linear) pixels are in, per input colour space.
_GAMUT = {"sRGB": "Rec.709", "linear": "Rec.709", "HDR": "Rec.2020"}

# OpenEXR: scanlines stored per chunk for each compression code (the spec's table).
_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 32, 9: 256}

# BT.2100 HLG constants; c = 0.5 - a ln(4a).
_HLG_A = 0.17883277
_HLG_B = 0.28466892
_HLG_C = 0.55991072928


# --- animated files -------------------------------------------------------------------------------


def animated_png_info(prompt: Any, extra_pnginfo: Any) -> Any:
    """A ``PngInfo`` with the prompt and each extra_pnginfo entry as ``comf`` chunks after the
    frames (``keyword NUL json``), or None when there is nothing to write."""
    from PIL.PngImagePlugin import PngInfo

    entries: list[tuple[str, Any]] = []
    if prompt:
        entries.append(("prompt", prompt))
    if isinstance(extra_pnginfo, dict):
        entries.extend((str(key), value) for key, value in extra_pnginfo.items())
    if not entries:
        return None
    info = PngInfo()
    for key, value in entries:
        info.add(
            b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True
        )
    return info


def webp_exif(first_frame: Any, prompt: Any, extra_pnginfo: Any) -> Any:
    """The EXIF block of an animated WEBP: ``prompt:<json>`` in Model, ``<key>:<json>`` in Make
    and the tags counting down from it."""
    exif = first_frame.getexif()
    if prompt is not None:
        exif[_EXIF_MODEL] = f"prompt:{json.dumps(prompt)}"
    if isinstance(extra_pnginfo, dict):
        for offset, (key, value) in enumerate(extra_pnginfo.items()):
            exif[_EXIF_MAKE - offset] = f"{key}:{json.dumps(value)}"
    return exif


# --- colour ------------------------------------------------------------------------------------


def _rgb_only(fn: Any, t: torch.Tensor) -> torch.Tensor:
    import torch

    if t.shape[-1] == 4:
        return torch.cat([fn(t[..., :3]), t[..., 3:]], dim=-1)
    return fn(t)


def srgb_to_linear(t: torch.Tensor) -> torch.Tensor:
    """The inverse sRGB transfer function (IEC 61966-2-1) on RGB; an alpha channel is kept."""
    import torch

    def convert(rgb: torch.Tensor) -> torch.Tensor:
        return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.0) + 0.055) / 1.055) ** 2.4)

    return _rgb_only(convert, t)


def hlg_to_linear(t: torch.Tensor) -> torch.Tensor:
    """The inverse HLG OETF (BT.2100): HLG signal to scene-linear light; an alpha channel is kept."""
    import torch

    def convert(rgb: torch.Tensor) -> torch.Tensor:
        high = (torch.exp((rgb.clamp(min=_HLG_C) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
        return torch.where(rgb <= 0.5, rgb**2 / 3.0, high)

    return _rgb_only(convert, t)


# --- single-image encoding ---------------------------------------------------------------------


def encode_image(image: torch.Tensor, file_format: str, bit_depth: str, color_space: str) -> bytes:
    """One ``[H, W, C]`` image (3 or 4 channels) as the bytes of a PNG or EXR file.

    PNG integers are the scaled values truncated, as the reference writes them. EXR pixels are
    scene-linear by convention: sRGB input goes through the inverse sRGB curve, HDR (HLG) input
    through the inverse HLG curve, linear input is written as it is, nothing clamped.
    """
    import av
    import numpy as np
    import torch

    height, width, channels = image.shape
    key = (file_format, bit_depth, channels == 4)
    if key not in _ENCODINGS or channels not in (3, 4):
        raise ValueError(f"cannot write a {channels}-channel image as {bit_depth} {file_format}")
    scale, dtype, frame_format, stream_format = _ENCODINGS[key]
    image = image.float().cpu()
    if file_format == "exr":
        if color_space == "sRGB":
            image = srgb_to_linear(image)
        elif color_space == "HDR":
            image = hlg_to_linear(image)
        array = image.numpy().astype(np.float32)
    else:
        array = (image * scale).clamp(0, scale).to(torch.int32).numpy().astype(dtype)
    # The codec alone (no container): for one frame of PNG or EXR its packet is the whole file.
    codec = av.CodecContext.create(file_format, "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = stream_format
    codec.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=frame_format)
    if frame_format != stream_format:
        frame = frame.reformat(format=stream_format)
    frame.pts = 0
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


def _metadata_entries(prompt: Any, extra_pnginfo: Any) -> list[tuple[str, str]]:
    entries = [("prompt", json.dumps(prompt))] if prompt is not None else []
    if isinstance(extra_pnginfo, dict):
        entries.extend((str(key), json.dumps(value)) for key, value in extra_pnginfo.items())
    return entries


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def add_png_text(png: bytes, prompt: Any, extra_pnginfo: Any) -> bytes:
    """``png`` with a ``tEXt`` chunk per metadata entry right after ``IHDR`` (the first chunk)."""
    entries = _metadata_entries(prompt, extra_pnginfo)
    if not entries or not png.startswith(_PNG_SIGNATURE):
        return png
    chunks = b"".join(
        _png_chunk(b"tEXt", key.encode("latin-1", "replace") + b"\0" + text.encode("latin-1", "replace"))
        for key, text in entries
    )
    (ihdr_length,) = struct.unpack(">I", png[8:12])
    end = len(_PNG_SIGNATURE) + 8 + ihdr_length + 4  # length + type, data, CRC
    return png[:end] + chunks + png[end:]


def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def add_exr_attributes(exr: bytes, prompt: Any, extra_pnginfo: Any, color_space: str | None) -> bytes:
    """``exr`` with the metadata as ``string`` header attributes and the ``chromaticities`` of
    the gamut its linear pixels are in.

    The offset table after the header holds absolute file positions, so every entry moves by
    the number of bytes added. Files that are not single-part scanline EXRs come back unchanged.
    """
    added = b"".join(
        _exr_attribute(key, "string", text.encode()) for key, text in _metadata_entries(prompt, extra_pnginfo)
    )
    if color_space is not None:
        primaries = _PRIMARIES[_GAMUT.get(color_space, "Rec.709")]
        added += _exr_attribute("chromaticities", "chromaticities", struct.pack("<8f", *primaries))
    if not added or len(exr) < 8 or exr[:4] != _EXR_MAGIC:
        return exr
    (version,) = struct.unpack("<I", exr[4:8])
    if version & 0x1A00:  # tiled, deep or multi-part: another offset layout
        return exr
    pos, window, compression = 8, None, 0
    while pos < len(exr) and exr[pos] != 0:
        name_end = exr.index(b"\0", pos)
        type_end = exr.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", exr[type_end + 1 : type_end + 5])
        value = exr[type_end + 5 : type_end + 5 + size]
        name, kind = exr[pos:name_end], exr[name_end + 1 : type_end]
        if name == b"dataWindow" and kind == b"box2i":
            window = struct.unpack("<4i", value)
        elif name == b"compression" and kind == b"compression":
            compression = value[0]
        pos = type_end + 5 + size
    if window is None:
        return exr
    lines = window[3] - window[1] + 1
    per_chunk = _LINES_PER_CHUNK.get(compression, 1)
    count = (lines + per_chunk - 1) // per_chunk
    table_start = pos + 1  # after the header's terminating NUL
    table_end = table_start + 8 * count
    offsets = struct.unpack(f"<{count}Q", exr[table_start:table_end])
    table = struct.pack(f"<{count}Q", *(offset + len(added) for offset in offsets))
    return exr[:pos] + added + exr[pos:table_start] + table + exr[table_end:]
