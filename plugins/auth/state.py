"""The plugin's per-server state and the identity checks of each mode.

``authenticate(request)`` answers a ``Principal`` or None, or raises ``Refusal`` (429 after too
many failures). Secrets are verified with scrypt in a worker thread; a token that verified once
is remembered by its SHA-256 digest until the credentials file changes, so API clients pay the
slow hash once, and a revoked token stops working on the next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from kernel import StashKey
from kernel.identity import Principal
from plugins.auth import secrets_hash
from plugins.auth.credentials import Credentials
from plugins.auth.limiter import FailureLimiter
from plugins.auth.options import AuthOptions
from plugins.auth.outputs import OWNERS_FILE, OutputOwners
from plugins.auth.sessions import COOKIE_NAME, Sessions
from plugins.userdata import api as userdata

log = logging.getLogger("comfykernel.auth")

VERIFIED_KEPT = 4096
WS_PATHS = frozenset({"/ws", "/api/ws"})


class Refusal(Exception):
    """Ends a request early with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def too_many(retry_after: int) -> Refusal:
    response = web.json_response(
        {"error": "Too many failed attempts; try again later"},
        status=429,
        headers={"Retry-After": str(retry_after)},
    )
    return Refusal(response)


@dataclass
class AuthState:
    options: AuthOptions
    user_path: Path
    credentials: Credentials = field(init=False)
    sessions: Sessions = field(init=False)
    limiter: FailureLimiter = field(init=False)
    owners: OutputOwners = field(init=False)
    # sha256(token) -> (user id, credentials version it was verified under)
    _verified: OrderedDict[bytes, tuple[str, int]] = field(default_factory=OrderedDict)
    # proxy mode: user name -> user id
    _proxy_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.credentials = Credentials(self.user_path)
        self.sessions = Sessions(self.options.session_seconds)
        self.limiter = FailureLimiter(self.options.max_failures, self.options.failure_window)
        self.owners = OutputOwners(self.user_path / OWNERS_FILE)

    # --- who is the client ---------------------------------------------------------------

    def client_address(self, request: web.Request) -> str:
        """The peer, or behind a trusted proxy the nearest untrusted X-Forwarded-For hop."""
        peer = request.remote or ""
        if not self.options.is_trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.options.is_trusted(hop):
                return hop
        return peer

    # --- identities ----------------------------------------------------------------------

    def principal_for(self, user_id: str) -> Principal | None:
        account = self.credentials.account(user_id)
        if account is None:
            return None
        return Principal(user=user_id, admin=account.admin, name=account.name)

    async def authenticate(self, request: web.Request) -> Principal | None:
        self.credentials.refresh()
        if self.options.mode == "proxy":
            return await self._from_proxy(request)
        token = _bearer(request)
        if token is None and request.path in WS_PATHS:
            # Browsers cannot set headers on a WebSocket; scripts may put the token in the URL.
            token = request.query.get("token") or None
        if token is not None:
            return await self._from_token(request, token)
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            return self.from_session(cookie)
        return None

    def from_session(self, value: str) -> Principal | None:
        session = self.sessions.lookup(value)
        if session is None:
            return None
        account = self.credentials.account(session.user)
        if account is None or account.generation != session.generation:
            self.sessions.end(value)
            return None
        return Principal(user=session.user, admin=account.admin, name=account.name)

    async def _from_token(self, request: web.Request, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        known = self._verified.get(digest)
        if known is not None and known[1] == self.credentials.version:
            return self.principal_for(known[0])
        address_key = "addr:" + self.client_address(request)
        wait = self.limiter.retry_after(address_key)
        if wait is not None:
            raise too_many(wait)
        parts = secrets_hash.split_token(token)
        user_id = self.credentials.by_token.get(parts[0]) if parts else None
        account = self.credentials.account(user_id) if user_id else None
        stored = account.tokens.get(parts[0]) if account and parts else None
        ok = False
        if parts and stored is not None:
            ok = await asyncio.to_thread(secrets_hash.verify_secret, parts[1], stored.hash)
        if not ok or user_id is None:
            # Unknown token ids fail without hashing: random guesses cost the server nothing.
            self.limiter.fail(address_key)
            log.warning("refused an API token from %s", self.client_address(request))
            return None
        self._verified[digest] = (user_id, self.credentials.version)
        while len(self._verified) > VERIFIED_KEPT:
            self._verified.popitem(last=False)
        return self.principal_for(user_id)

    async def _from_proxy(self, request: web.Request) -> Principal | None:
        if not self.options.is_trusted(request.remote):
            return None  # whatever the header says: only the proxy may name users
        name = request.headers.get(self.options.header, "").strip()
        if not name:
            return None
        user_id = self._proxy_ids.get(name)
        if user_id is None:
            user_id = await asyncio.to_thread(self._proxy_user, name)
            if user_id is None:
                return None
            self._proxy_ids[name] = user_id
        account = self.credentials.account(user_id)
        admin = account.admin if account is not None else False
        return Principal(user=user_id, admin=admin, name=name)

    def _proxy_user(self, name: str) -> str | None:
        found = self.credentials.find(name)
        if found is not None:
            return found[0]
        users = userdata.load_users(self.user_path)
        existing = userdata.find_user(users, name)
        if existing is not None or not self.options.autocreate:
            if existing is None:
                log.warning("proxy named unknown user %r and --auth-no-autocreate is set", name)
            return existing
        try:
            user_id = userdata.ensure_user(self.user_path, name)
        except userdata.BadUsername as exc:
            log.warning("proxy named a user that cannot be created (%s)", exc)
            return None
        log.info("created user %s for the proxy's %r", user_id, name)
        return user_id

    # --- password login ------------------------------------------------------------------

    async def login(self, request: web.Request, name: str, password: str) -> Principal | None:
        """Check a name and password under the rate limits; ``Refusal`` (429) when over them."""
        self.credentials.refresh()
        address_key, user_key = "addr:" + self.client_address(request), "user:" + name.casefold()
        wait = self.limiter.retry_after(address_key, user_key)
        if wait is not None:
            raise too_many(wait)
        found = self.credentials.find(name)
        if found is None:
            await asyncio.to_thread(secrets_hash.burn_time, password)
            ok = False
        else:
            ok = await asyncio.to_thread(secrets_hash.verify_secret, password, found[1].password)
        if not ok or found is None:
            self.limiter.fail(address_key, user_key)
            log.warning("failed login from %s", self.client_address(request))
            return None
        self.limiter.clear(user_key)
        user_id, account = found
        return Principal(user=user_id, admin=account.admin, name=account.name)


def _bearer(request: web.Request) -> str | None:
    raw = request.headers.get("Authorization")
    if raw is None:
        return None
    scheme, _, value = raw.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (a proxy's Basic credentials): not ours to judge
    return value.strip()


AUTH: StashKey[AuthState] = StashKey()
