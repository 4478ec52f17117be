"""Who made which output file: an index written from the prompt events, read by ``/view``.

Outputs stay in the shared output (and temp) directory as on the reference; this index records
the owner of every file a prompt reports (``executed`` messages and the final result), in a small
SQLite file in the user directory so it outlives restarts. A file nobody reported (copied in by
hand, written before auth was on) has no owner: only admins may read it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

log = logging.getLogger("comfykernel.auth")

OWNERS_FILE = "auth_outputs.sqlite"
FOLDERS = ("output", "temp")
# Prompt owners remembered between queueing and their outputs (bounded).
PROMPTS_KEPT = 20_000


def file_key(subfolder: str, filename: str) -> str:
    """The index key of ``<subfolder>/<filename>``: a normalised relative POSIX path."""
    return PurePosixPath(subfolder.replace("\\", "/"), filename.replace("\\", "/")).as_posix().lstrip("/")


def reported_files(outputs: Any) -> Iterator[tuple[str, str]]:
    """(folder type, key) of every file in a node's (or a prompt's) UI output."""
    if not isinstance(outputs, dict):
        return
    for value in outputs.values():
        if isinstance(value, dict):
            yield from reported_files(value)  # a prompt's outputs: node id -> UI output
            continue
        if not isinstance(value, list):
            continue
        for item in value:
            if not isinstance(item, dict):
                continue
            filename, folder = item.get("filename"), item.get("type", "output")
            if isinstance(filename, str) and folder in FOLDERS:
                subfolder = item.get("subfolder")
                yield folder, file_key(subfolder if isinstance(subfolder, str) else "", filename)


class OutputOwners:
    def __init__(self, path: Any) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.prompts: OrderedDict[str, str] = OrderedDict()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS owners (folder TEXT, key TEXT, owner TEXT, PRIMARY KEY (folder, key))"
        )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def prompt_queued(self, prompt_id: str, owner: str) -> None:
        self.prompts[prompt_id] = owner
        while len(self.prompts) > PROMPTS_KEPT:
            self.prompts.popitem(last=False)

    def record(self, owner: str, outputs: Any) -> None:
        if self.db is None:
            return
        rows = [(folder, key, owner) for folder, key in reported_files(outputs)]
        if rows:
            # The latest writer owns a file name (SaveImage never reuses one; overwrites do).
            self.db.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?, ?)", rows)

    def owner(self, folder: str, key: str) -> str | None:
        if self.db is None:
            return None
        row = self.db.execute(
            "SELECT owner FROM owners WHERE folder = ? AND key = ?", (folder, key)
        ).fetchone()
        return row[0] if row else None
