"""Fixtures of the browser tests (the helpers themselves are in ``tests/e2e/harness.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import CHROMIUM


@pytest.fixture
def chromium_path() -> str:
    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    )
    return CHROMIUM
