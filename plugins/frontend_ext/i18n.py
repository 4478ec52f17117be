"""GET /i18n: translations from ``register_translations`` and packs' ``locales/<lang>/`` folders."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from kernel.registry import TranslationRegistry, deep_merge
from plugins.frontend_ext.packs import NodePack

log = logging.getLogger("comfykernel.frontend")

# locales/<lang>/<file>: main.json holds top-level keys, the others nest under their own key.
_NESTED_FILES = {"nodeDefs.json": "nodeDefs", "commands.json": "commands", "settings.json": "settings"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring translation file %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring translation file %s: not a JSON object", path)
        return None
    return data


def pack_translations(pack: NodePack) -> dict[str, dict[str, Any]]:
    locales = pack.directory / "locales"
    found: dict[str, dict[str, Any]] = {}
    if not locales.is_dir():
        return found
    for lang_dir in sorted(p for p in locales.iterdir() if p.is_dir()):
        merged: dict[str, Any] = {}
        main = lang_dir / "main.json"
        if main.is_file() and (data := _read_json(main)) is not None:
            deep_merge(merged, data)
        for filename, key in _NESTED_FILES.items():
            path = lang_dir / filename
            if path.is_file() and (data := _read_json(path)) is not None:
                deep_merge(merged.setdefault(key, {}), data)
        if merged:
            found[lang_dir.name] = merged
    return found


def build_translations(registry: TranslationRegistry, packs: list[NodePack]) -> dict[str, dict[str, Any]]:
    """Plugins' mappings first, then packs in name order; later sources win on conflicts."""
    result: dict[str, dict[str, Any]] = copy.deepcopy(registry.languages)
    for pack in packs:
        for lang, mapping in pack_translations(pack).items():
            deep_merge(result.setdefault(lang, {}), mapping)
    return result
