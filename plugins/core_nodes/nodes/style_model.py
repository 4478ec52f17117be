"""Style models: the loader and StyleModelApply (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
