"""``<user dir>/auth.json``: who may log in, with what, and which API tokens exist.

Keyed by the userdata user id (``plugins.userdata.api``), so an account's files and settings are
that user's. Only salted scrypt hashes are stored. The file is written atomically (temp file,
fsync, rename) by ``comfykernel users``; a running server re-reads it when it changed, so a new
password, a removed user or a revoked token takes effect on the next request. Each user has a
``generation`` that password changes and removals raise: sessions made before stop working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("comfykernel.auth")

CREDENTIALS_FILE = "auth.json"
VERSION = 1


@dataclass
class Token:
    hash: str
    created: int
    label: str = ""


@dataclass
class Account:
    name: str
    admin: bool = False
    password: str | None = None  # a secrets_hash string; None = no password login (proxy users)
    generation: int = 1
    tokens: dict[str, Token] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "admin": self.admin,
            "password": self.password,
            "generation": self.generation,
            "tokens": {tid: vars(tok) for tid, tok in self.tokens.items()},
        }


class CredentialsError(ValueError):
    """The credentials file cannot be read or makes no sense."""


def _account(user_id: str, raw: Any) -> Account:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CredentialsError(f"entry {user_id!r} has no name")
    tokens: dict[str, Token] = {}
    for token_id, tok in (raw.get("tokens") or {}).items():
        if not isinstance(tok, dict) or not isinstance(tok.get("hash"), str):
            raise CredentialsError(f"token {token_id!r} of {user_id!r} has no hash")
        tokens[str(token_id)] = Token(tok["hash"], int(tok.get("created", 0)), str(tok.get("label", "")))
    password = raw.get("password")
    return Account(
        name=raw["name"],
        admin=raw.get("admin") is True,
        password=password if isinstance(password, str) else None,
        generation=int(raw.get("generation", 1)),
        tokens=tokens,
    )


def read_accounts(path: Path) -> dict[str, Account]:
    """The accounts of ``path`` (``{}`` when it does not exist); ``CredentialsError`` otherwise."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(raw)
        users = data["users"]
        if not isinstance(users, dict):
            raise TypeError("users is not an object")
        return {str(uid): _account(str(uid), entry) for uid, entry in users.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(f"{path} is not a credentials file: {exc}") from exc


def write_accounts(path: Path, accounts: dict[str, Account]) -> None:
    """Replace ``path`` atomically; the file is readable by its owner only (mkstemp's 0600)."""
    data = json.dumps(
        {"version": VERSION, "users": {uid: acc.to_json() for uid, acc in accounts.items()}}, indent=1
    ).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".auth-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class Credentials:
    """The accounts a server checks against, re-read whenever the file changes on disk."""

    def __init__(self, user_path: Path) -> None:
        self.path = user_path / CREDENTIALS_FILE
        self.accounts: dict[str, Account] = {}
        self.by_token: dict[str, str] = {}  # token id -> user id
        self._stamp: tuple[int, int, int] | None = None
        # Bumped on every (re)load: caches of verified secrets compare it to know they are stale.
        self.version = 0
        self.load()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> None:
        """Read the file; ``CredentialsError`` when it is broken (the startup check)."""
        stamp = self._file_stamp()
        accounts = read_accounts(self.path)
        self._install(accounts, stamp)

    def _install(self, accounts: dict[str, Account], stamp: tuple[int, int, int] | None) -> None:
        self.accounts = accounts
        self.by_token = {tid: uid for uid, acc in accounts.items() for tid in acc.tokens}
        self._stamp = stamp
        self.version += 1

    def refresh(self) -> None:
        """Re-read a changed file. A file broken while running locks everyone out (fail closed)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            accounts = read_accounts(self.path)
        except CredentialsError as exc:
            log.error("refusing every login until the credentials file is fixed: %s", exc)
            accounts = {}
        self._install(accounts, stamp)

    def account(self, user_id: str) -> Account | None:
        return self.accounts.get(user_id)

    def find(self, name: str) -> tuple[str, Account] | None:
        for user_id, acc in self.accounts.items():
            if acc.name == name:
                return user_id, acc
        return None

    def __iter__(self) -> Iterator[tuple[str, Account]]:
        return iter(self.accounts.items())


def now() -> int:
    return int(time.time())
