"""Shared test helpers: the fixtures themselves come from kernel.testing (pytest11 entry point)."""

from __future__ import annotations
