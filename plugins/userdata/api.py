"""The userdata plugin's public API: the users map other plugins (and commands) may read or extend.

A user is an id (``<sanitised name>_<uuid4>``, a folder under the user directory) with a display
name, kept in ``<user dir>/users.json``. The ``auth`` plugin creates its accounts here so that
its users are the very ids userdata stores files and settings under. A running server notices
users added by another process at the next request naming one.
"""

from __future__ import annotations

import json
from pathlib import Path

from plugins.userdata.atomic import write_atomic
from plugins.userdata.users import USERS_FILE, BadUsername, new_user_id, read_users_file

__all__ = ["BadUsername", "ensure_user", "find_user", "load_users"]


def load_users(user_path: Path) -> dict[str, str]:
    """The id -> name map (``{}`` before the first user); ``ValueError`` when the file is unusable."""
    return read_users_file(user_path / USERS_FILE)


def find_user(users: dict[str, str], name: str) -> str | None:
    """The id of the user called ``name`` (names are unique), or None."""
    for user_id, user_name in users.items():
        if user_name == name:
            return user_id
    return None


def ensure_user(user_path: Path, name: str) -> str:
    """The id of the user called ``name``, created (and written atomically) when missing.

    Blocking file I/O: call it from a thread in a server. ``BadUsername`` for a name that cannot
    become a user (empty, the reserved ``__`` prefix, too long).
    """
    users = load_users(user_path)
    found = find_user(users, name.strip())
    if found is not None:
        return found
    clean, user_id = new_user_id(name, users)
    users[user_id] = clean
    user_path.mkdir(parents=True, exist_ok=True)
    write_atomic(user_path / USERS_FILE, json.dumps(users).encode("utf-8"))
    return user_id
