"""String nodes: concatenate, substring, length, case, trim, replace, compare, regex, JSON and format (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
