"""More custom-sampling nodes: CFG override, dual-model guider, ER-SDE and SA-Solver samplers (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
