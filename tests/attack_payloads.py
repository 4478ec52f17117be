"""Path-traversal payloads shared by every test that feeds client names to a file route.

Each payload is the string the *handler* sees, i.e. after the one percent-decoding that the HTTP
layer performs. Send them so that exactly that string arrives:

- query parameters: ``params={"filename": payload}`` (the client encodes once, aiohttp decodes once);
- multipart / JSON fields: as they are (no percent-decoding happens there);
- a URL path segment (``/userdata/{file}``): ``urllib.parse.quote(payload, safe="")``.

The ``%2e%2e%2f`` family checks that nothing decodes a second time: after the one decoding the
handler sees a literal ``%2e%2e%2f...``, which must not turn into ``../``. ``RAW_QUERY_PAYLOADS``
are already-encoded query strings for tests that put them on the wire verbatim
(``yarl.URL(url, encoded=True)``).

Usage::

    from tests.attack_payloads import SENTINEL_BYTES, attack_payloads, plant_sentinel, plant_escape_symlink

    sentinel = plant_sentinel(tmp_path)                 # tmp_path/outside/secret.txt
    plant_escape_symlink(input_dir, sentinel)           # input/escape.png -> sentinel
    for payload in attack_payloads(sentinel):
        ...  # expect 4xx; assert SENTINEL_BYTES not in body; nothing new outside the roots
"""

from __future__ import annotations

import os
from pathlib import Path

# Unique bytes: a response containing them leaked the sentinel.
SENTINEL_BYTES = b"SENTINEL-7f3c9a51-do-not-serve"
SENTINEL_NAME = "secret.txt"
ESCAPE_LINK_NAME = "escape.png"

# Payloads that do not depend on where the test's sentinel lives.
STATIC_PAYLOADS: list[str] = [
    f"../{SENTINEL_NAME}",
    f"../../outside/{SENTINEL_NAME}",
    f"../../../../../../../../../../outside/{SENTINEL_NAME}",
    f"..\\{SENTINEL_NAME}",
    f"..\\..\\outside\\{SENTINEL_NAME}",
    f"sub/../../{SENTINEL_NAME}",
    f"sub/..\\..\\{SENTINEL_NAME}",
    "..",
    "../",
    "%2e%2e%2fsecret.txt",  # single-encoded form, must not be decoded a second time
    "%2e%2e/secret.txt",
    "..%2fsecret.txt",
    "%252e%252e%252fsecret.txt",  # double-encoded form
    "..%5csecret.txt",
    "/etc/passwd",
    "/etc/hostname",
    "C:\\Windows\\win.ini",
    "C:secret.txt",
    "c:/windows/win.ini",
    "\\\\?\\C:\\Windows\\win.ini",
    "\\\\server\\share\\secret.txt",
    "//server/share/secret.txt",
    "\\secret.txt",
    "secret.txt\x00.png",
    "\x00",
    "a\nb.png",
    "a\rb.png",
    "a" * 300 + ".png",
    ("d" * 200 + "/") * 25 + "x.png",
    "CON",
    "nul.png",
    "COM1",
    "LPT9.txt",
    "aux",
    "PRN.log",
    "CONIN$",
    "",
]

# Query strings placed on the wire verbatim (the server decodes them once).
RAW_QUERY_PAYLOADS: list[str] = [
    "%2e%2e%2fsecret.txt",
    "%2e%2e%5csecret.txt",
    "%252e%252e%252fsecret.txt",
    "..%2f..%2foutside%2fsecret.txt",
    "%2fetc%2fpasswd",
    "secret.txt%00.png",
    "%5c%5c%3f%5cC%3a%5csecret.txt",
]


def plant_sentinel(base: Path) -> Path:
    """Write ``base/outside/secret.txt`` holding ``SENTINEL_BYTES``; also a copy at ``base/secret.txt``."""
    outside = base / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    sentinel = outside / SENTINEL_NAME
    sentinel.write_bytes(SENTINEL_BYTES)
    (base / SENTINEL_NAME).write_bytes(SENTINEL_BYTES)
    return sentinel


def plant_escape_symlink(root: Path, target: Path, name: str = ESCAPE_LINK_NAME) -> Path:
    """A symlink inside ``root`` pointing at ``target`` outside it (the resolver must refuse it)."""
    root.mkdir(parents=True, exist_ok=True)
    link = root / name
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
    return link


def attack_payloads(sentinel: Path | None = None) -> list[str]:
    """``STATIC_PAYLOADS`` plus the absolute path of ``sentinel`` and the escaping symlink's name."""
    payloads = list(STATIC_PAYLOADS)
    payloads.append(ESCAPE_LINK_NAME)
    if sentinel is not None:
        payloads.append(str(sentinel))
        payloads.append(str(sentinel.parent))
    return payloads


def snapshot_outside(base: Path, roots: list[Path]) -> set[str]:
    """Every path under ``base`` that is not under one of ``roots``: compare before and after."""
    real_roots = [os.path.realpath(r) for r in roots]
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if any(real == r or real.startswith(r + os.sep) for r in real_roots):
                continue
            if any(path == r or path.startswith(r + os.sep) for r in real_roots):
                continue
            found.add(path)
    return found
