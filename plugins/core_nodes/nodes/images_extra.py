"""Image nodes beyond the basics: flips, rotations, crops, stitching, batches, tiles, animated saving, image compare, Canny, colour and bounding boxes (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
