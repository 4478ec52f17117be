"""Morphology and colour-space nodes: erode/dilate/open/close/gradient/top-hat, RGB<->YUV (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
