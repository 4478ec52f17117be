"""Per-user ``comfy.settings.json``: read, shallow-merge, atomic write, one writer per user."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernel import StashKey
from plugins.userdata.atomic import write_atomic

log = logging.getLogger("comfykernel.userdata")

SETTINGS_FILE = "comfy.settings.json"


def read_settings(path: Path) -> dict[str, Any]:
    """The stored settings; ``{}`` when the file is missing, unreadable or not a JSON object."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot read settings %s: %s", path, exc)
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        log.error("settings file %s is not valid JSON: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        log.error("settings file %s does not hold a JSON object", path)
        return {}
    return data


def _merge_and_write(path: Path, patch: Mapping[str, Any]) -> None:
    settings = read_settings(path)
    settings.update(patch)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=4).encode("utf-8"))


class SettingsStore:
    """Serialises read-modify-write cycles per user so concurrent posts never lose a key."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def lock_for(self, user_id: str) -> asyncio.Lock:
        return self._locks.setdefault(user_id, asyncio.Lock())

    async def read(self, path: Path) -> dict[str, Any]:
        # Writers replace the file atomically, so a reader needs no lock.
        return await asyncio.to_thread(read_settings, path)

    async def merge(self, user_id: str, path: Path, patch: Mapping[str, Any]) -> None:
        """Shallow-merge ``patch`` into the user's settings file."""
        async with self.lock_for(user_id):
            await asyncio.to_thread(_merge_and_write, path, dict(patch))


SETTINGS: StashKey[SettingsStore] = StashKey()
