"""Paths to the reference server's golden sampling data, copied into the repo (tests/golden)."""

from __future__ import annotations

from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "golden"
