"""The SQLite record of every prompt: one row per prompt, from acceptance to history entry.

A row is ``pending`` when accepted, ``running`` once the executor took it and ``done`` when it
has a history entry (``seq`` then gives its place in history's insertion order). Finished rows
keep the entry and the list-form job as JSON text, so listings splice stored bytes into the
response instead of decoding and re-encoding them.

All access happens on the event-loop thread (bus events and HTTP handlers), so one connection
serves the store. WAL with ``synchronous=NORMAL``: a commit survives the process being killed
(the OS has the pages), which is the durability the plugin promises; fsync per prompt would
buy only power-loss safety at a large cost per ``POST /prompt``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from kernel import StartupError, StashKey
from plugins.history import jobs

DB_NAME = "comfykernel_history.db"

PENDING = "pending"
RUNNING = "running"
DONE = "done"

# A client may reuse a prompt_id: the new run starts over, an old history entry stays listed
# until the new one replaces it (as the reference's history dict behaves).
_RECORD_QUEUED = """INSERT INTO prompts (prompt_id, accepted, user, state, attempts, item)
   VALUES (?, ?, ?, 'pending', 0, ?)
   ON CONFLICT(prompt_id) DO UPDATE SET
     accepted = excluded.accepted, user = excluded.user, state = 'pending',
     attempts = 0, item = excluded.item"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    accepted INTEGER NOT NULL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    item TEXT,
    seq INTEGER,
    job_status TEXT,
    workflow_id TEXT,
    created_key REAL NOT NULL DEFAULT 0,
    duration REAL NOT NULL DEFAULT 0,
    entry TEXT,
    job TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS prompts_seq ON prompts(seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_user_seq ON prompts(user, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_state ON prompts(state, accepted) WHERE state != 'done';
CREATE INDEX IF NOT EXISTS prompts_created ON prompts(created_key, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_created_desc ON prompts(created_key DESC, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_duration ON prompts(duration, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_duration_desc ON prompts(duration DESC, seq) WHERE seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS prompts_job_status ON prompts(job_status, user, workflow_id) WHERE seq IS NOT NULL;
"""

_FINISHED_STATUSES = (jobs.COMPLETED, jobs.FAILED, jobs.CANCELLED)
_encoder = msgspec.json.Encoder(enc_hook=str)  # a stray non-JSON output value must not lose the entry
_decoder = msgspec.json.Decoder()


def encode(value: Any) -> str:
    return _encoder.encode(value).decode()


def decode(text: str | bytes) -> Any:
    return _decoder.decode(text)


class Unfinished(msgspec.Struct, frozen=True):
    """A prompt recorded as accepted but not finished, as recovery reads it back."""

    prompt_id: str
    state: str
    attempts: int
    item: list[Any]


class HistoryStore:
    """Opens lazily so that building a Kernel (``comfykernel plugins list``) touches no disk."""

    def __init__(self, directory: Path, max_items: int) -> None:
        self.path = directory / DB_NAME
        self.max_items = max_items
        self._db: sqlite_utils.Database | None = None
        self.closed = False
        # Set when the server starts shutting down: an interruption from then on is the
        # shutdown's doing, not the user's.
        self.closing = False
        self._next_seq = 0
        self._next_accepted = 0
        # record_queued's rows while an accept_group is open (None: written at once).
        self._queued_rows: list[tuple[Any, ...]] | None = None

    # --- lifecycle ---

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            if self.closed:
                raise RuntimeError("the history store is closed")
            self.open()
        assert self._db is not None
        return self._db

    def open(self) -> None:
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The loop thread is the only user, but kernels are built on one thread and served on
            # another in some hosts, hence check_same_thread=False.
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db = sqlite_utils.Database(conn)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"history: cannot open the database {self.path}: {exc}") from exc
        self._db = db
        self._next_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM prompts")
        self._next_accepted = self._scalar("SELECT COALESCE(MAX(accepted), 0) + 1 FROM prompts")

    def close(self) -> None:
        self.closed = True
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around what runs inside (a group of accepted prompts); nests."""
        if self.closed:
            yield
            return
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def accept_group(self) -> Iterator[None]:
        """``transaction`` around a group of accepted prompts whose ``record_queued`` rows are
        written with one statement just before the commit: each statement lets the executor
        thread take the GIL, and POST /prompt waits for it to come back. The group is only
        PromptQueued events, so no other write of the store comes between."""
        if self.closed or self.db.conn.in_transaction:
            yield
            return
        with self.transaction():
            self._queued_rows = []
            try:
                yield
                rows = self._queued_rows
            finally:
                self._queued_rows = None
            if rows:
                self.db.conn.executemany(_RECORD_QUEUED, rows)

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, params).fetchone()[0]

    # --- lifecycle records ---

    def record_queued(self, item_list: list[Any], user: str) -> None:
        accepted = self._next_accepted
        self._next_accepted += 1
        row = (item_list[1], accepted, user, encode(item_list))
        if self._queued_rows is not None:  # inside accept_group: written at its end
            self._queued_rows.append(row)
        else:
            self.db.conn.execute(_RECORD_QUEUED, row)

    def mark_started(self, prompt_id: str) -> None:
        self.db.execute(
            "UPDATE prompts SET state = 'running', attempts = attempts + 1 WHERE prompt_id = ? AND state != 'done'",
            [prompt_id],
        )

    def mark_requeued(self, prompt_id: str, item_list: list[Any] | None = None) -> None:
        """Pending again (recovery); ``item_list`` replaces the stored item (a new queue number)."""
        if item_list is None:
            self.db.execute("UPDATE prompts SET state = 'pending' WHERE prompt_id = ?", [prompt_id])
        else:
            self.db.execute(
                "UPDATE prompts SET state = 'pending', item = ? WHERE prompt_id = ?",
                [encode(item_list), prompt_id],
            )

    def unstart(self, prompt_id: str) -> None:
        """The run was cut short by a shutdown: pending again, and the attempt does not count."""
        self.db.execute(
            "UPDATE prompts SET state = 'pending', attempts = MAX(attempts - 1, 0)"
            " WHERE prompt_id = ? AND state = 'running'",
            [prompt_id],
        )

    def remove_pending(self, prompt_ids: Iterable[str]) -> None:
        ids = list(prompt_ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.db.conn:
            self.db.execute(f"DELETE FROM prompts WHERE prompt_id IN ({marks}) AND seq IS NULL", ids)
            self.db.execute(f"UPDATE prompts SET state = 'done' WHERE prompt_id IN ({marks})", ids)

    def record_finished(self, item_list: list[Any], user: str, entry: dict[str, Any]) -> None:
        """Write the history entry (and the job summary derived from it), then evict the oldest."""
        job = jobs.history_job(entry)
        seq = self._next_seq
        self._next_seq += 1
        created = job.get("create_time")
        row = {
            "prompt_id": item_list[1],
            "user": user,
            "state": DONE,
            "item": None,
            "seq": seq,
            "job_status": job["status"],
            "workflow_id": job.get("workflow_id"),
            "created_key": created if isinstance(created, (int, float)) else 0,
            "duration": jobs.duration(job.get("execution_start_time"), job.get("execution_end_time")),
            "entry": encode(entry),
            "job": encode(job),
        }
        with self.db.conn:
            self.db.execute(
                """INSERT INTO prompts (prompt_id, accepted, user, state, attempts, item, seq, job_status,
                                        workflow_id, created_key, duration, entry, job)
                   VALUES (:prompt_id, :accepted, :user, :state, 0, :item, :seq, :job_status,
                           :workflow_id, :created_key, :duration, :entry, :job)
                   ON CONFLICT(prompt_id) DO UPDATE SET
                     user = excluded.user, state = excluded.state, item = NULL, seq = excluded.seq,
                     job_status = excluded.job_status, workflow_id = excluded.workflow_id,
                     created_key = excluded.created_key, duration = excluded.duration,
                     entry = excluded.entry, job = excluded.job""",
                {**row, "accepted": self._next_accepted},
            )
            self._next_accepted += 1
            self._evict()

    def _evict(self) -> None:
        excess = self._scalar("SELECT COUNT(*) FROM prompts WHERE seq IS NOT NULL") - self.max_items
        if excess > 0:
            cutoff = self._scalar(
                "SELECT MAX(seq) FROM (SELECT seq FROM prompts WHERE seq IS NOT NULL ORDER BY seq LIMIT ?)",
                [excess],
            )
            # A resubmitted id waiting to run again only loses its old entry, not its queue record.
            self.db.execute(
                "UPDATE prompts SET seq = NULL, entry = NULL, job = NULL, job_status = NULL"
                " WHERE seq <= ? AND state != 'done'",
                [cutoff],
            )
            self.db.execute("DELETE FROM prompts WHERE seq <= ?", [cutoff])

    # --- recovery ---

    def unfinished(self) -> list[Unfinished]:
        rows = self.db.execute(
            "SELECT prompt_id, state, attempts, item FROM prompts WHERE state != 'done' ORDER BY accepted"
        ).fetchall()
        return [Unfinished(pid, state, attempts, decode(item)) for pid, state, attempts, item in rows]

    def running_items(self, user: str | None) -> list[list[Any]]:
        """Prompts recorded as running; the executor may be between finishing one and our record."""
        # "state != 'done'" lets SQLite use the partial index of unfinished rows.
        sql = "SELECT item FROM prompts WHERE state != 'done' AND state = 'running' AND item IS NOT NULL"
        params: list[Any] = []
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        return [decode(row[0]) for row in self.db.execute(sql + " ORDER BY accepted", params)]

    def state_of(self, prompt_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM prompts WHERE prompt_id = ?", [prompt_id]).fetchone()
        return row[0] if row else None

    def user_of(self, prompt_id: str) -> str | None:
        row = self.db.execute("SELECT user FROM prompts WHERE prompt_id = ?", [prompt_id]).fetchone()
        return row[0] if row else None

    # --- history reads and edits ---

    def history_page(
        self, user: str | None, max_items: int | None, offset: int | None
    ) -> list[tuple[str, str]]:
        """(prompt_id, entry JSON) oldest first, with the reference's max_items/offset rules."""
        where, params = _user_filter(user)
        base = f"SELECT prompt_id, entry FROM prompts WHERE seq IS NOT NULL{where}"
        if max_items is not None and max_items <= 0:
            return []
        if offset is None:
            if max_items is None:
                return list(self.db.execute(base + " ORDER BY seq", params))
            # No offset: the newest max_items entries, still listed oldest first.
            rows = list(self.db.execute(base + " ORDER BY seq DESC LIMIT ?", [*params, max_items]))
            rows.reverse()
            return rows
        limit = -1 if max_items is None else max_items
        return list(self.db.execute(base + " ORDER BY seq LIMIT ? OFFSET ?", [*params, limit, offset]))

    def history_entry(self, prompt_id: str, user: str | None) -> str | None:
        where, params = _user_filter(user)
        row = self.db.execute(
            f"SELECT entry FROM prompts WHERE prompt_id = ? AND seq IS NOT NULL{where}", [prompt_id, *params]
        ).fetchone()
        return row[0] if row else None

    def clear_history(self, user: str | None) -> None:
        where, params = _user_filter(user)
        with self.db.conn:
            self.db.execute(f"DELETE FROM prompts WHERE state = 'done'{where}", params)
            # A finished id that was resubmitted keeps its new run, without the old entry.
            self.db.execute(
                f"UPDATE prompts SET seq = NULL, entry = NULL, job = NULL, job_status = NULL WHERE seq IS NOT NULL{where}",
                params,
            )

    def delete_history(self, prompt_ids: Sequence[str], user: str | None) -> None:
        if not prompt_ids:
            return
        where, params = _user_filter(user)
        marks = ",".join("?" * len(prompt_ids))
        with self.db.conn:
            self.db.execute(
                f"DELETE FROM prompts WHERE state = 'done' AND prompt_id IN ({marks}){where}",
                [*prompt_ids, *params],
            )
            self.db.execute(
                f"UPDATE prompts SET seq = NULL, entry = NULL, job = NULL, job_status = NULL"
                f" WHERE seq IS NOT NULL AND prompt_id IN ({marks}){where}",
                [*prompt_ids, *params],
            )

    def history_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM prompts WHERE seq IS NOT NULL"))

    # --- job reads ---

    def finished_jobs(
        self,
        user: str | None,
        statuses: Sequence[str],
        workflow_id: str | None,
        sort_by: str,
        descending: bool,
        limit: int | None,
    ) -> tuple[list[tuple[float, str]], int]:
        """((sort key, job JSON) sorted, total matching) for finished prompts.

        Ties keep history order (oldest first) in both directions, as a stable sort would.
        """
        if not statuses:
            return [], 0
        where, params = _user_filter(user)
        if set(statuses) != set(_FINISHED_STATUSES):
            marks = ",".join("?" * len(statuses))
            where += f" AND job_status IN ({marks})"
            params = [*params, *statuses]
        if workflow_id is not None:
            where += " AND workflow_id = ?"
            params.append(workflow_id)
        key = "duration" if sort_by == "execution_duration" else "created_key"
        direction = "DESC" if descending else "ASC"
        total = int(self._scalar(f"SELECT COUNT(*) FROM prompts WHERE seq IS NOT NULL{where}", params))
        sql = (
            f"SELECT {key}, job FROM prompts WHERE seq IS NOT NULL{where} ORDER BY {key} {direction}, seq ASC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(k, job) for k, job in self.db.execute(sql, params)], total

    def finished_entry_any_user(self, prompt_id: str) -> tuple[str, str] | None:
        """(user, entry JSON) of a finished prompt."""
        row = self.db.execute(
            "SELECT user, entry FROM prompts WHERE prompt_id = ? AND seq IS NOT NULL", [prompt_id]
        ).fetchone()
        return (row[0], row[1]) if row else None


def _user_filter(user: str | None) -> tuple[str, list[Any]]:
    if user is None:
        return "", []
    return " AND user = ?", [user]


STORE: StashKey[HistoryStore] = StashKey()
