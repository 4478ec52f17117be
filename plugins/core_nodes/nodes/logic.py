"""Logic, maths and small value nodes: and/or/not/switch, combos, math expressions, number conversion, seed, resolution (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
