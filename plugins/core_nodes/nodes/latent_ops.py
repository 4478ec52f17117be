"""Latent maths and batching: add/subtract/multiply/interpolate, batch/concat/cut, latent operations, rebatching (group A)."""

from __future__ import annotations

NODES: dict[str, tuple[type, str | None]] = {}
