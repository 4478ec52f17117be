"""Slow salted hashes (scrypt, from the standard library) for passwords and API tokens.

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt b64>$<digest b64>`` so the cost can be raised
later without breaking existing entries. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

# About 50 ms and 16 MiB per hash on a server core: cheap for a login, dear for a guesser.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_DKLEN = 32
_SALT_BYTES = 16
TOKEN_PREFIX = "ckt"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=256 * 1024 * 1024
    )


def hash_secret(secret: str) -> str:
    """A new salted hash of ``secret`` in the stored form."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str | None) -> bool:
    """Does ``secret`` match ``stored``? False for a malformed or missing hash (never raises)."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(secret, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    return hash_secret(secrets.token_hex(16))


def burn_time(secret: str) -> None:
    """Check ``secret`` against a throwaway hash: when the named user does not exist, a miss then
    costs as long as a wrong password, and response times do not tell which names are accounts."""
    verify_secret(secret, _dummy_hash())


def new_token() -> tuple[str, str, str]:
    """(token id, secret, full token ``ckt_<id>_<secret>``) for a new API token."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"{TOKEN_PREFIX}_{token_id}_{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(token id, secret) of a token of ours, or None for anything else."""
    prefix, sep, rest = token.partition("_")
    token_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or not token_id or not secret:
        return None
    return token_id, secret
