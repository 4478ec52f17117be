"""Post-processing nodes: blend, blur, quantize, sharpen, colour transfer, scaling and batching helpers (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
