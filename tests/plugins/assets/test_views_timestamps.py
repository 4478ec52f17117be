"""Asset timestamps are ISO-8601 UTC with a "Z" suffix, the only form the web UI accepts."""

from __future__ import annotations

import re

from plugins.assets.views import iso

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_iso_uses_z_suffix():
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert ISO_Z.match(iso(1_700_000_000.25))
