"""What CreateBoundingBoxes makes of the boxes drawn in its editor: regions in fractions of the
canvas, pixel boxes, Ideogram-style prompt elements and a preview picture.

The editor sends pixel boxes ``{x, y, width, height, metadata: {type, text, desc, palette}}``.
Elements give their box as ``[ymin, xmin, ymax, xmax]`` on a 0..1000 grid and at most five
palette colours, upper-cased.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The preview's longest side at most, and how far a background picture is darkened under the boxes.
PREVIEW_LONG_EDGE = 1024
PREVIEW_DIM = 0.25
_WHITE = (255, 255, 255)
_GREY = (140, 140, 140)


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """``#RRGGBB`` (the ``#`` optional) as integers; white for anything else."""
    digits = value.lstrip("#")
    if len(digits) != 6:
        return _WHITE
    try:
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    except ValueError:
        return _WHITE


def readable_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """``rgb`` lightened towards white until its luma reaches 130, so text in it reads on the dark preview."""
    r, g, b = rgb
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    if luma >= 130:
        return rgb
    t = (130 - luma) / (255 - luma)
    return round(r + (255 - r) * t), round(g + (255 - g) * t), round(b + (255 - b) * t)


def normalize_palette(colors: Any) -> list[str]:
    """The non-empty colour strings of a list (or a dict's values), upper-cased."""
    if isinstance(colors, dict):
        colors = list(colors.values())
    if not isinstance(colors, list | tuple):
        return []
    return [c.upper() for c in colors if isinstance(c, str) and c]


def regions_from_boxes(boxes: Any, width: int, height: int) -> list[dict[str, Any]]:
    """The editor's pixel boxes as regions in fractions of the ``width`` x ``height`` canvas."""
    if not isinstance(boxes, list):
        return []
    w, h = width or 1, height or 1
    regions = []
    for box in boxes:
        if not isinstance(box, dict):
            continue
        meta = box.get("metadata") if isinstance(box.get("metadata"), dict) else {}
        regions.append(
            {
                "x": box.get("x", 0) / w,
                "y": box.get("y", 0) / h,
                "w": box.get("width", 0) / w,
                "h": box.get("height", 0) / h,
                "type": meta.get("type", "obj"),
                "text": meta.get("text", ""),
                "desc": meta.get("desc", ""),
                "palette": meta.get("palette", []),
            }
        )
    return regions


def _to_pixels(region: dict[str, Any], width: int, height: int) -> dict[str, int]:
    x, y, w, h = region.get("x", 0.0), region.get("y", 0.0), region.get("w", 0.0), region.get("h", 0.0)
    if w < 0:  # a box drawn right to left
        x, w = x + w, -w
    if h < 0:
        y, h = y + h, -h
    return {
        "x": round(x * width),
        "y": round(y * height),
        "width": round(w * width),
        "height": round(h * height),
    }


def pixel_boxes(regions: list[dict[str, Any]], width: int, height: int) -> list[list[dict[str, int]]]:
    """The BOUNDING_BOX output: one frame holding every region's pixel box (no frame when empty)."""
    boxes = [_to_pixels(region, width, height) for region in regions]
    return [boxes] if boxes else []


def _grid_box(region: dict[str, Any]) -> list[int]:
    def grid(value: float) -> int:
        return max(0, min(1000, round(value * 1000)))

    x, y, w, h = region.get("x", 0.0), region.get("y", 0.0), region.get("w", 0.0), region.get("h", 0.0)
    ymin, xmin, ymax, xmax = grid(y), grid(x), grid(y + h), grid(x + w)
    return [min(ymin, ymax), min(xmin, xmax), max(ymin, ymax), max(xmin, xmax)]


def prompt_elements(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ARRAY output: ``{type, bbox, [text], desc, [color_palette]}`` per region."""
    elements = []
    for region in regions:
        kind = "text" if region.get("type") == "text" else "obj"
        element: dict[str, Any] = {"type": kind, "bbox": _grid_box(region)}
        if kind == "text":
            element["text"] = region.get("text", "")
        element["desc"] = region.get("desc", "")
        palette = normalize_palette(region.get("palette", []))
        if palette:
            element["color_palette"] = palette[:5]
        elements.append(element)
    return elements


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except Exception:  # a Pillow whose default font has one size
        return ImageFont.load_default()


def _wrapped(draw: Any, text: str, font: Any, max_width: float) -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _base_picture(background: Any, width: int, height: int) -> Any:
    """The picture the boxes are drawn on: the background's first image darkened, else dark grey."""
    import numpy as np
    from PIL import Image, ImageEnhance

    if background is not None:
        array = np.clip(background[0].float().cpu().numpy() * 255, 0, 255).astype(np.uint8)
        picture = Image.fromarray(array[..., :3] if array.shape[-1] >= 3 else array[..., 0]).convert("RGB")
        iw, ih = picture.size
        scale = min(1.0, PREVIEW_LONG_EDGE / (max(iw, ih) or 1))
        size = (max(1, round(iw * scale)), max(1, round(ih * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
        return ImageEnhance.Brightness(picture).enhance(PREVIEW_DIM).convert("RGBA")
    scale = min(1.0, PREVIEW_LONG_EDGE / (max(width, height) or 1))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = round(PREVIEW_DIM * 128)
    return Image.new("RGBA", size, (grey, grey, grey, 255))


def render_preview(
    regions: list[dict[str, Any]], width: int, height: int, background: Any = None
) -> torch.Tensor:
    """A ``[1, H, W, 3]`` picture of the regions: outlines in each one's first palette colour, a
    strip of its palette along the top, its number and its text or description."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    base = _base_picture(background, width, height)
    rw, rh = base.size
    overlay = Image.new("RGBA", (rw, rh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(10, round(rh / 64))
    font, tag_font = _font(size), _font(max(9, size - 2))

    def clamp(value: float, limit: int) -> int:
        return max(0, min(limit, round(value)))

    for index, region in enumerate(regions):
        palette = [c for c in (region.get("palette") or []) if isinstance(c, str) and c]
        r, g, b = hex_to_rgb(palette[0]) if palette else _GREY
        xs = sorted(
            (clamp(region.get("x", 0) * rw, rw), clamp((region.get("x", 0) + region.get("w", 0)) * rw, rw))
        )
        ys = sorted(
            (clamp(region.get("y", 0) * rh, rh), clamp((region.get("y", 0) + region.get("h", 0)) * rh, rh))
        )
        (x1, x2), (y1, y2) = xs, ys
        draw.rectangle([x1, y1, x2, y2], outline=(r, g, b, 255), width=2)
        swatches = palette[:5]
        if swatches and x2 - x1 > 2:
            strip = max(5, size // 2)
            step = (x2 - x1) / len(swatches)
            for i, colour in enumerate(swatches):
                draw.rectangle(
                    [x1 + round(i * step), y1, x1 + round((i + 1) * step), y1 + strip],
                    fill=hex_to_rgb(colour),
                )
        tag = f"{index + 1:02d}"
        draw.rectangle(
            [x1, y1, x1 + draw.textlength(tag, font=tag_font) + 6, y1 + size + 2], fill=(r, g, b, 255)
        )
        dark_text = 0.299 * r + 0.587 * g + 0.114 * b > 140
        draw.text(
            (x1 + 3, y1 + 1), tag, fill=(0, 0, 0, 255) if dark_text else (255, 255, 255, 255), font=tag_font
        )
        body = region.get("desc", "") or ""
        if region.get("type") == "text" and region.get("text"):
            body = f'"{region["text"]}"' + (f" — {body}" if body else "")
        if body and x2 - x1 > 8:
            top = y1 + size + 5
            for line in _wrapped(draw, body, font, x2 - x1 - 8):
                if top > y2:
                    break
                draw.text((x1 + 4, top), line, fill=(*readable_color((r, g, b)), 255), font=font)
                top += size + 2
    picture = Image.alpha_composite(base, overlay).convert("RGB")
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).unsqueeze(0)
