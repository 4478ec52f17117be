"""Guidance variants as model patches: APG, CFGNorm, CFGZeroStar, Mahiro, TCFG, PerpNeg, SAG, PAG, FreSca, NAG, skip-layer guidance, epsilon scaling (group B)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
