"""Who is asking: the users map (``users.json``) and the ``Comfy-User`` header rule."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

from kernel import StartupError, StashKey
from kernel.paths import UnsafePath, safe_join
from plugins.userdata.atomic import write_atomic

log = logging.getLogger("comfykernel.userdata")

DEFAULT_USER = "default"
# Ids with this prefix belong to the server itself and are never reachable over HTTP.
SYSTEM_USER_PREFIX = "__"
USERS_FILE = "users.json"
USER_HEADER = "Comfy-User"
# The id becomes a folder name: <slug>_<36-char uuid> must stay under 255 bytes.
MAX_NAME_CHARS = 200
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9\-_]+")


class UnknownUser(LookupError):
    """The request names no known user (missing, unlisted, or a system user)."""


class BadUsername(ValueError):
    """``POST /users`` was given a name that cannot become a user; the message is the API's."""


class UserStore:
    """The users map of one server plus the lock that serialises changes to ``users.json``."""

    def __init__(self, user_path: Path, multi_user: bool) -> None:
        self.user_path = user_path
        self.multi_user = multi_user
        self.lock = asyncio.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self.users: dict[str, str] = self._load() if multi_user else {DEFAULT_USER: DEFAULT_USER}

    @property
    def users_file(self) -> Path:
        return self.user_path / USERS_FILE

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.users_file.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, str]:
        self._stamp = self._file_stamp()
        try:
            return read_users_file(self.users_file)
        except ValueError as exc:
            # Refuse to start rather than silently forget every user (a later save would erase them).
            raise StartupError(str(exc)) from exc

    def refresh(self) -> None:
        """Pick up users another process added (``comfykernel users add``) since the last read."""
        if not self.multi_user or self._file_stamp() == self._stamp:
            return
        try:
            self.users = self._load()
        except StartupError as exc:
            log.error("keeping the users read before: %s", exc)

    def request_user(self, headers: Mapping[str, str]) -> str:
        """The user id a request acts as; ``UnknownUser`` when it names nobody we know."""
        user = DEFAULT_USER
        if self.multi_user:
            user = headers.get(USER_HEADER, DEFAULT_USER)
            if user not in self.users:
                self.refresh()
        if user.startswith(SYSTEM_USER_PREFIX) or user not in self.users:
            raise UnknownUser(user)
        return user

    def user_root(self, user_id: str) -> Path:
        """``<user dir>/<user_id>``, checked to be inside the user dir (``UnsafePath`` if not)."""
        root = safe_join(self.user_path, user_id)
        if len(root.relative_to(self.user_path).parts) != 1:
            raise UnsafePath(user_id, "user id is not a single folder name")
        return root

    async def add_user(self, name: object) -> str:
        """Create a user named ``name``; return the new id ``<sanitised name>_<uuid4>``."""
        async with self.lock:
            self.refresh()  # another process may have added users: keep them
            name, user_id = new_user_id(name, self.users)
            users = {**self.users, user_id: name}
            data = json.dumps(users).encode("utf-8")
            await asyncio.to_thread(self._save, data)
            self.users = users
        log.info("created user %s", user_id)
        return user_id

    def _save(self, data: bytes) -> None:
        self.user_path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.users_file, data)
        self._stamp = self._file_stamp()


def read_users_file(path: Path) -> dict[str, str]:
    """The id -> name map of a ``users.json``; ``{}`` when absent, ``ValueError`` when unusable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"cannot read the users file {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the users file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"the users file {path} must map user ids to names")
    return data


def new_user_id(name: object, users: Mapping[str, str]) -> tuple[str, str]:
    """(cleaned name, new id ``<sanitised name>_<uuid4>``) for a user not yet in ``users``."""
    if not isinstance(name, str):
        raise BadUsername("username not provided")
    name = name.strip()
    if not name:
        raise BadUsername("username not provided")
    if name.startswith(SYSTEM_USER_PREFIX):
        raise BadUsername("System User prefix not allowed")
    slug = _NOT_ID_CHARS.sub("-", name)
    if len(slug) > MAX_NAME_CHARS:
        raise BadUsername(f"username longer than {MAX_NAME_CHARS} characters")
    if slug.startswith(SYSTEM_USER_PREFIX):
        raise BadUsername("System User prefix not allowed")
    if name in users.values():
        raise BadUsername("Duplicate username.")
    return name, f"{slug}_{uuid.uuid4()}"


USERS: StashKey[UserStore] = StashKey()
