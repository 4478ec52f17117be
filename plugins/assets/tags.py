"""Tag rules: lower-cased, trimmed, bounded; root tags say where a file lives; ``missing`` is the server's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MISSING = "missing"
ROOT_TAGS = ("models", "input", "output")
# Tags only the server sets: prune adds ``missing``, a seed or a reappearing file removes it.
PROTECTED = frozenset({MISSING})
MAX_TAG = 128
MAX_TAGS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadTag(ValueError):
    """A tag the API refuses; the message names it."""


def normalize(tag: object) -> str:
    if not isinstance(tag, str):
        raise BadTag(f"tags must be strings, not {type(tag).__name__}")
    value = tag.strip().lower()
    if not value:
        raise BadTag("tags must not be empty")
    if len(value) > MAX_TAG:
        raise BadTag(f"tag {value[:32]!r}... is longer than {MAX_TAG} characters")
    if _CONTROL.search(value) or "," in value:
        raise BadTag(f"tag {value!r} contains a comma or a control character")
    return value


def normalize_all(tags: Iterable[object]) -> list[str]:
    """Normalised tags, duplicates dropped, first occurrence's order kept."""
    out = list(dict.fromkeys(normalize(t) for t in tags))
    if len(out) > MAX_TAGS:
        raise BadTag(f"at most {MAX_TAGS} tags per asset")
    return out


def parse_field(values: Iterable[str]) -> list[str]:
    """Tags from form fields or query values: each may be a JSON array or a comma list."""
    found: list[object] = []
    for raw in values:
        text = raw.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                raise BadTag("tags must be a JSON array of strings or a comma-separated list") from None
            if not isinstance(decoded, list):
                raise BadTag("tags must be a JSON array of strings or a comma-separated list")
            found.extend(decoded)
        else:
            found.extend(part for part in text.split(",") if part.strip())
    return normalize_all(found)
