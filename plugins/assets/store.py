"""The SQLite record of assets: content rows (one per blake3 hash), asset records, their tags.

A *content* row is the identity of some bytes (``blake3:<hex>``, size). An *asset* is a named,
owned, tagged reference to a content; many assets may share one content. An asset made from a
file on disk carries its ``path`` (unique); one made by ``from-hash`` has no path and is served
from any live file of the same content.

Handlers (event-loop thread), the seeder thread and the output registrar share one connection
behind a lock; every operation is short (the seeder commits in batches), so the loop never waits
long. WAL lets a reader in another process (the bench) look while the server writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from kernel import StashKey
from plugins.assets.tags import MISSING

DB_NAME = "comfykernel_assets.db"

SORT_COLUMNS = ("name", "created_at", "updated_at", "size", "last_access_time")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contents (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL REFERENCES contents(hash),
    owner TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    path TEXT,
    mtime REAL,
    size INTEGER NOT NULL,
    mime_type TEXT NOT NULL,
    user_metadata TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    preview_id TEXT,
    prompt_id TEXT,
    is_immutable INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_access_time REAL NOT NULL,
    tag_list TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS assets_path ON assets(path) WHERE path IS NOT NULL;
CREATE INDEX IF NOT EXISTS assets_hash ON assets(hash);
-- Covering for the default listing: filters on tags and owner run without touching rows.
CREATE INDEX IF NOT EXISTS assets_created_tags ON assets(created_at, id, tag_list, owner);
CREATE INDEX IF NOT EXISTS assets_updated ON assets(updated_at, id);
CREATE INDEX IF NOT EXISTS assets_name ON assets(name, id);
CREATE INDEX IF NOT EXISTS assets_size ON assets(size, id);
CREATE INDEX IF NOT EXISTS assets_access ON assets(last_access_time, id);
CREATE TABLE IF NOT EXISTS asset_tags (
    asset_id TEXT NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (asset_id, tag)
);
CREATE INDEX IF NOT EXISTS asset_tags_tag ON asset_tags(tag, asset_id);
"""

# ``tag_list`` (",input,red,") mirrors asset_tags on the asset row. Tag filters test it with
# instr(), which is a cheap scan of one index; joining asset_tags per row was 20x slower at
# 100,000 assets. Tags never contain commas, so ",tag," matches exactly one tag.
_REFRESH_TAG_LIST = (
    "UPDATE assets SET tag_list = COALESCE((SELECT ',' || group_concat(tag, ',') || ',' "
    "FROM asset_tags WHERE asset_id = ?), '') WHERE id = ?"
)


def tag_list(tags: Sequence[str]) -> str:
    return "," + ",".join(tags) + "," if tags else ""


_COLUMNS = (
    "id, hash, owner, name, path, mtime, size, mime_type, user_metadata, metadata, preview_id, "
    "prompt_id, is_immutable, created_at, updated_at, last_access_time"
)


class AssetRow(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    owner: str
    name: str
    path: str | None
    mtime: float | None
    size: int
    mime_type: str
    user_metadata: str
    metadata: str
    preview_id: str | None
    prompt_id: str | None
    is_immutable: int
    created_at: float
    updated_at: float
    last_access_time: float


class FileRecord(msgspec.Struct, kw_only=True):
    """A file on disk to record (seeding, execution outputs, uploads through /upload/image)."""

    path: str
    hash: str
    size: int
    mtime: float
    mime_type: str
    name: str
    tags: list[str]
    metadata: dict[str, Any]
    owner: str = ""
    prompt_id: str | None = None


class Filters(msgspec.Struct, kw_only=True):
    """What a listing (or tag histogram) selects, owner visibility included."""

    owners: tuple[str, ...] | None  # None: every record
    include_tags: list[str] = msgspec.field(default_factory=list)
    exclude_tags: list[str] = msgspec.field(default_factory=list)
    name_contains: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class BadFilter(ValueError):
    """A metadata filter the SQL layer cannot express."""


def _row(values: Sequence[Any]) -> AssetRow:
    return AssetRow(**dict(zip(_COLUMNS.split(", "), values, strict=True)))


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _metadata_clause(key: str, value: Any) -> tuple[str, list[Any]]:
    if not isinstance(key, str) or not key or '"' in key or "\\" in key:
        raise BadFilter(f"metadata_filter key {key!r} is not usable")
    jpath = f'$."{key}"'
    if isinstance(value, list):
        if not value:
            raise BadFilter(f"metadata_filter value for {key!r} is an empty list")
        parts = [_metadata_clause(key, item) for item in value]
        return "(" + " OR ".join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]
    if value is None:
        return "json_type(a.user_metadata, ?) IS NULL OR json_type(a.user_metadata, ?) = 'null'", [
            jpath,
            jpath,
        ]
    if isinstance(value, bool):
        return "json_type(a.user_metadata, ?) = ?", [jpath, "true" if value else "false"]
    if isinstance(value, int | float):
        return (
            "(json_type(a.user_metadata, ?) IN ('integer', 'real') AND json_extract(a.user_metadata, ?) = ?)",
            [jpath, jpath, value],
        )
    if isinstance(value, str):
        return (
            "(json_type(a.user_metadata, ?) = 'text' AND json_extract(a.user_metadata, ?) = ?)",
            [jpath, jpath, value],
        )
    raise BadFilter(f"metadata_filter value for {key!r} must be a string, number, boolean, null or a list")


def where(filters: Filters) -> tuple[str, list[Any]]:
    clauses = ["1"]
    params: list[Any] = []
    if filters.owners is not None:
        # Unary + keeps SQLite from choosing an owner index over the ORDER BY index: nearly
        # every row passes this test, so walking the sort order and stopping early wins.
        clauses.append(f"+a.owner IN ({_placeholders(len(filters.owners))})")
        params += filters.owners
    for tag in filters.include_tags:
        clauses.append("instr(a.tag_list, ?) > 0")
        params.append(f",{tag},")
    for tag in filters.exclude_tags:
        clauses.append("instr(a.tag_list, ?) = 0")
        params.append(f",{tag},")
    if filters.name_contains:
        clauses.append("a.name LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(filters.name_contains)}%")
    for key, value in filters.metadata.items():
        clause, values = _metadata_clause(key, value)
        clauses.append(f"({clause})")
        params += values
    return " AND ".join(clauses), params


class AssetStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / DB_NAME
        self._lock = threading.RLock()
        self._db: sqlite_utils.Database | None = None

    # --- lifecycle ---

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db = sqlite_utils.Database(conn)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.conn.close()
                self._db = None

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("asset store is not open")
        return self._db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self.db.execute(sql, params).fetchall())

    def _transaction(self) -> Any:
        return _Transaction(self)

    # --- reads ---

    def get(self, asset_id: str) -> AssetRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM assets WHERE id = ?", (asset_id,))
        return _row(rows[0]) if rows else None

    def get_by_path(self, path: str) -> AssetRow | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM assets WHERE path = ?", (path,))
        return _row(rows[0]) if rows else None

    def find_reference(self, owner: str, content_hash: str, name: str) -> AssetRow | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM assets WHERE owner = ? AND hash = ? AND name = ? "
            "ORDER BY created_at LIMIT 1",
            (owner, content_hash, name),
        )
        return _row(rows[0]) if rows else None

    def visible_with_hash(self, content_hash: str, owners: Sequence[str] | None) -> AssetRow | None:
        """The oldest asset of that content one of ``owners`` (None: anyone) may see, own records first."""
        if owners is None:
            return self.any_with_hash(content_hash)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM assets WHERE hash = ? AND owner IN ({_placeholders(len(owners))}) "
            "ORDER BY owner = '', created_at LIMIT 1",
            [content_hash, *owners],
        )
        return _row(rows[0]) if rows else None

    def any_with_hash(self, content_hash: str) -> AssetRow | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM assets WHERE hash = ? ORDER BY created_at LIMIT 1", (content_hash,)
        )
        return _row(rows[0]) if rows else None

    def content_size(self, content_hash: str) -> int | None:
        rows = self._query("SELECT size FROM contents WHERE hash = ?", (content_hash,))
        return int(rows[0][0]) if rows else None

    def live_path(self, content_hash: str, prefer: str | None = None) -> str | None:
        """A file on disk holding this content (``prefer`` first when it still exists)."""
        if prefer and os.path.isfile(prefer):
            return prefer
        rows = self._query(
            "SELECT path FROM assets WHERE hash = ? AND path IS NOT NULL ORDER BY created_at",
            (content_hash,),
        )
        for (path,) in rows:
            if os.path.isfile(path):
                return str(path)
        return None

    def tags_of(self, ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {i: [] for i in ids}
        if not ids:
            return out
        rows = self._query(
            f"SELECT asset_id, tag FROM asset_tags WHERE asset_id IN ({_placeholders(len(ids))}) ORDER BY rowid",
            list(ids),
        )
        for asset_id, tag in rows:
            out[asset_id].append(tag)
        return out

    def list(
        self, filters: Filters, sort: str, order: str, limit: int, offset: int
    ) -> tuple[list[AssetRow], int]:
        if sort not in SORT_COLUMNS or order not in ("asc", "desc"):
            raise ValueError(f"bad sort {sort!r} {order!r}")
        clause, params = where(filters)
        with self._lock:
            total = self.db.execute(f"SELECT COUNT(*) FROM assets a WHERE {clause}", params).fetchone()[0]
            rows = self.db.execute(
                f"SELECT {', '.join('a.' + c for c in _COLUMNS.split(', '))} FROM assets a WHERE {clause} "
                f"ORDER BY a.{sort} {order}, a.id {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [_row(r) for r in rows], int(total)

    def tag_histogram(self, filters: Filters) -> dict[str, int]:
        clause, params = where(filters)
        rows = self._query(
            "SELECT t.tag, COUNT(*) FROM asset_tags t "
            f"WHERE t.asset_id IN (SELECT a.id FROM assets a WHERE {clause}) "
            "GROUP BY t.tag ORDER BY COUNT(*) DESC, t.tag",
            params,
        )
        return {tag: int(n) for tag, n in rows}

    def tag_counts(
        self, owners: Sequence[str] | None, search: str | None, limit: int, offset: int
    ) -> tuple[list[tuple[str, int]], int]:
        clause = "1"
        params: list[Any] = []
        if search:
            clause += " AND t.tag LIKE ? ESCAPE '\\'"
            params.append(f"%{_like_escape(search.lower())}%")
        if owners is None:  # counts straight off the (tag, asset_id) index
            base = f"FROM asset_tags t WHERE {clause}"
        else:
            clause += f" AND a.owner IN ({_placeholders(len(owners))})"
            params += owners
            base = f"FROM asset_tags t JOIN assets a ON a.id = t.asset_id WHERE {clause}"
        with self._lock:
            total = self.db.execute(f"SELECT COUNT(DISTINCT t.tag) {base}", params).fetchone()[0]
            rows = self.db.execute(
                f"SELECT t.tag, COUNT(*) AS n {base} GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [(tag, int(n)) for tag, n in rows], int(total)

    def known_files(self) -> dict[str, tuple[float | None, int, str]]:
        """path → (mtime, size, id) of every asset made from a file."""
        rows = self._query("SELECT path, mtime, size, id FROM assets WHERE path IS NOT NULL")
        return {path: (mtime, size, asset_id) for path, mtime, size, asset_id in rows}

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM assets")[0][0])

    # --- writes ---

    def create(
        self,
        *,
        content_hash: str,
        size: int,
        mime_type: str,
        name: str,
        owner: str,
        tags: Sequence[str],
        path: str | None = None,
        mtime: float | None = None,
        user_metadata: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        preview_id: str | None = None,
        prompt_id: str | None = None,
    ) -> AssetRow:
        now = time.time()
        row = AssetRow(
            id=str(uuid.uuid4()),
            hash=content_hash,
            owner=owner,
            name=name,
            path=path,
            mtime=mtime,
            size=size,
            mime_type=mime_type,
            user_metadata=json.dumps(user_metadata or {}),
            metadata=json.dumps(metadata or {}),
            preview_id=preview_id,
            prompt_id=prompt_id,
            is_immutable=0,
            created_at=now,
            updated_at=now,
            last_access_time=now,
        )
        with self._transaction() as db:
            self._insert(db, row, tags)
        return row

    def _insert(self, db: sqlite_utils.Database, row: AssetRow, tags: Sequence[str]) -> None:
        db.execute(
            "INSERT OR IGNORE INTO contents (hash, size, created_at) VALUES (?, ?, ?)",
            (row.hash, row.size, row.created_at),
        )
        # Plain SQL: sqlite-utils' table helpers commit through the connection's context manager,
        # which would end our explicit transaction half-way.
        values = (*msgspec.structs.astuple(row), tag_list(list(dict.fromkeys(tags))))
        db.execute(f"INSERT INTO assets ({_COLUMNS}, tag_list) VALUES ({_placeholders(len(values))})", values)
        db.conn.executemany(
            "INSERT OR IGNORE INTO asset_tags (asset_id, tag) VALUES (?, ?)", [(row.id, t) for t in tags]
        )

    def update(self, asset_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._transaction() as db:
            db.execute(f"UPDATE assets SET {assignments} WHERE id = ?", [*fields.values(), asset_id])

    def touch(self, asset_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE assets SET last_access_time = ? WHERE id = ?", (time.time(), asset_id))

    def add_tags(self, asset_id: str, tags: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        with self._transaction() as db:
            present = {t for (t,) in db.execute("SELECT tag FROM asset_tags WHERE asset_id = ?", (asset_id,))}
            added = [t for t in tags if t not in present]
            db.conn.executemany(
                "INSERT INTO asset_tags (asset_id, tag) VALUES (?, ?)", [(asset_id, t) for t in added]
            )
            db.execute(_REFRESH_TAG_LIST, (asset_id, asset_id))
            if added:
                db.execute("UPDATE assets SET updated_at = ? WHERE id = ?", (time.time(), asset_id))
        already = [t for t in tags if t in present]
        return added, already, self.tags_of([asset_id])[asset_id]

    def remove_tags(self, asset_id: str, tags: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        with self._transaction() as db:
            present = {t for (t,) in db.execute("SELECT tag FROM asset_tags WHERE asset_id = ?", (asset_id,))}
            removed = [t for t in tags if t in present]
            db.conn.executemany(
                "DELETE FROM asset_tags WHERE asset_id = ? AND tag = ?", [(asset_id, t) for t in removed]
            )
            db.execute(_REFRESH_TAG_LIST, (asset_id, asset_id))
            if removed:
                db.execute("UPDATE assets SET updated_at = ? WHERE id = ?", (time.time(), asset_id))
        missing = [t for t in tags if t not in present]
        return removed, missing, self.tags_of([asset_id])[asset_id]

    def delete(self, asset_id: str, delete_content: bool) -> list[str]:
        """Remove one asset; return the files the caller should unlink (maybe none).

        A file another reference still depends on is never returned: when path-less references
        of the same content would lose their only file, the first of them adopts the path.
        """
        unlink: list[str] = []
        with self._transaction() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM assets WHERE id = ?", (asset_id,)).fetchall()
            if not found:
                return []
            row = _row(found[0])
            db.execute("DELETE FROM asset_tags WHERE asset_id = ?", (asset_id,))
            db.execute("UPDATE assets SET preview_id = NULL WHERE preview_id = ?", (asset_id,))
            db.execute("DELETE FROM assets WHERE id = ?", (asset_id,))
            others = db.execute(
                "SELECT id, path FROM assets WHERE hash = ? ORDER BY created_at", (row.hash,)
            ).fetchall()
            live_elsewhere = any(p is not None and os.path.isfile(p) for _, p in others)
            if row.path is not None and others and not live_elsewhere:
                heir = next((i for i, p in others if p is None), None)
                if heir is not None:
                    db.execute(
                        "UPDATE assets SET path = ?, mtime = ? WHERE id = ?", (row.path, row.mtime, heir)
                    )
            elif row.path is not None and delete_content:
                unlink.append(row.path)
            if not others:
                db.execute("DELETE FROM contents WHERE hash = ?", (row.hash,))
        return unlink

    def record_files(self, records: Iterable[FileRecord]) -> tuple[int, int]:
        """Insert or refresh assets for files on disk (keyed by path); returns (created, updated).

        A file that is back (or changed) loses the ``missing`` tag.
        """
        batch = list(records)
        if not batch:
            return 0, 0
        now = time.time()
        with self._transaction() as db:
            existing: dict[str, tuple[str, str]] = {}
            for chunk in iter_chunks([r.path for r in batch], 500):
                rows = db.execute(
                    f"SELECT path, id, hash FROM assets WHERE path IN ({_placeholders(len(chunk))})",
                    list(chunk),
                ).fetchall()
                existing.update({path: (asset_id, old) for path, asset_id, old in rows})
            db.conn.executemany(
                "INSERT OR IGNORE INTO contents (hash, size, created_at) VALUES (?, ?, ?)",
                [(r.hash, r.size, now) for r in batch],
            )
            fresh = [r for r in batch if r.path not in existing]
            stale = [r for r in batch if r.path in existing]
            rows_new = [
                AssetRow(
                    id=str(uuid.uuid4()),
                    hash=r.hash,
                    owner=r.owner,
                    name=r.name,
                    path=r.path,
                    mtime=r.mtime,
                    size=r.size,
                    mime_type=r.mime_type,
                    user_metadata="{}",
                    metadata=json.dumps(r.metadata),
                    preview_id=None,
                    prompt_id=r.prompt_id,
                    is_immutable=0,
                    created_at=now,
                    updated_at=now,
                    last_access_time=now,
                )
                for r in fresh
            ]
            db.conn.executemany(
                f"INSERT INTO assets ({_COLUMNS}, tag_list) VALUES ({_placeholders(len(_COLUMNS.split(', ')) + 1)})",
                [
                    (*msgspec.structs.astuple(row), tag_list(list(dict.fromkeys(rec.tags))))
                    for row, rec in zip(rows_new, fresh, strict=True)
                ],
            )
            db.conn.executemany(
                "INSERT OR IGNORE INTO asset_tags (asset_id, tag) VALUES (?, ?)",
                [(row.id, tag) for row, rec in zip(rows_new, fresh, strict=True) for tag in rec.tags],
            )
            db.conn.executemany(
                "UPDATE assets SET hash = ?, size = ?, mtime = ?, mime_type = ?, updated_at = ?, "
                "prompt_id = COALESCE(?, prompt_id) WHERE id = ?",
                [
                    (r.hash, r.size, r.mtime, r.mime_type, now, r.prompt_id, existing[r.path][0])
                    for r in stale
                ],
            )
            self._untag_missing(db, [existing[r.path][0] for r in stale])
            for old_hash in {existing[r.path][1] for r in stale if existing[r.path][1] != r.hash}:
                _drop_orphan_content(db, old_hash)
        return len(fresh), len(stale)

    def clear_missing(self, ids: Sequence[str]) -> None:
        with self._transaction() as db:
            self._untag_missing(db, ids)

    def _untag_missing(self, db: sqlite_utils.Database, ids: Sequence[str]) -> None:
        # Only the few that carry the tag are touched (a reseed passes every unchanged file).
        marked = {i for (i,) in db.execute("SELECT asset_id FROM asset_tags WHERE tag = ?", (MISSING,))}
        back = [i for i in ids if i in marked]
        db.conn.executemany(
            "DELETE FROM asset_tags WHERE asset_id = ? AND tag = ?", [(i, MISSING) for i in back]
        )
        db.conn.executemany(_REFRESH_TAG_LIST, [(i, i) for i in back])

    def prune(self) -> int:
        """Tag every asset whose bytes are gone with ``missing`` (and untag those that are back).

        Returns how many assets were newly marked. Nothing is deleted: the records (and their
        user metadata) stay until someone deletes them through the API.
        """
        rows = self._query("SELECT id, hash, path FROM assets")
        missing_now = {i for (i,) in self._query("SELECT asset_id FROM asset_tags WHERE tag = ?", (MISSING,))}
        live_hashes: set[str] = set()
        gone: set[str] = set()
        for asset_id, content_hash, path in rows:
            if path is None:
                continue
            if os.path.isfile(path):
                live_hashes.add(content_hash)
            else:
                gone.add(asset_id)
        for asset_id, content_hash, path in rows:
            if path is None and content_hash not in live_hashes:
                gone.add(asset_id)
        newly = sorted(gone - missing_now)
        back = sorted(missing_now - gone)
        with self._transaction() as db:
            db.conn.executemany(
                "INSERT OR IGNORE INTO asset_tags (asset_id, tag) VALUES (?, ?)",
                [(i, MISSING) for i in newly],
            )
            db.conn.executemany(
                "DELETE FROM asset_tags WHERE asset_id = ? AND tag = ?", [(i, MISSING) for i in back]
            )
            db.conn.executemany(_REFRESH_TAG_LIST, [(i, i) for i in newly + back])
        return len(newly)


def _drop_orphan_content(db: sqlite_utils.Database, content_hash: str) -> None:
    db.execute(
        "DELETE FROM contents WHERE hash = ? AND NOT EXISTS (SELECT 1 FROM assets WHERE hash = ?)",
        (content_hash, content_hash),
    )


class _Transaction:
    """``with store._transaction() as db:`` — the lock plus BEGIN/COMMIT (ROLLBACK on error)."""

    def __init__(self, store: AssetStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite_utils.Database:
        self.store._lock.acquire()
        try:
            self.store.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise
        return self.store.db

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store._lock.release()


STORE = StashKey[AssetStore]()


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
