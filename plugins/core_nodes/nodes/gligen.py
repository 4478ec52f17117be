"""GLIGEN: the loader and the text-box conditioning (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
