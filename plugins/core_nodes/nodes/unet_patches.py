"""UNet patches: FreeU / FreeU_V2, HyperTile, ToMe, attention multipliers (group B)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
