"""Browser sessions: random cookie values, kept in memory as SHA-256 digests only.

A login always makes a new session (the one the browser carried, if any, ends): a value planted
before login is never promoted. Sessions expire after ``--auth-session-hours`` and die with the
account's ``generation`` (a password change or removal) or a server restart.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "comfykernel_session"
# A bound on memory: the oldest sessions go first when this many are open.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    user: str
    generation: int
    expires: float


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Sessions:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._open: dict[bytes, Session] = {}

    def create(self, user: str, generation: int) -> str:
        """A new session for ``user``; returns the cookie value (shown to nobody else)."""
        self._sweep()
        value = secrets.token_urlsafe(32)
        self._open[_digest(value)] = Session(user, generation, time.monotonic() + self.lifetime)
        while len(self._open) > MAX_SESSIONS:
            del self._open[next(iter(self._open))]
        return value

    def lookup(self, value: str) -> Session | None:
        # The secret is looked up by its digest: timing can only reveal digest prefixes.
        session = self._open.get(_digest(value))
        if session is None:
            return None
        if session.expires <= time.monotonic():
            self._open.pop(_digest(value), None)
            return None
        return session

    def end(self, value: str) -> None:
        self._open.pop(_digest(value), None)

    def _sweep(self) -> None:
        clock = time.monotonic()
        for key in [k for k, s in self._open.items() if s.expires <= clock]:
            del self._open[key]
