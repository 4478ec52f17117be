"""Path attacks against every file-touching route and parameter of the files plugin.

Each payload must be refused with a 4xx, no byte of the sentinel outside the roots may come
back, and nothing may be written outside input/output/temp. The ``%2e%2e%2f`` family is the
exception that proves the one-decoding rule: after the single percent-decoding such a name is a
literal (if odd) file name, so an upload may store it, but only inside its root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import yarl
from safetensors.numpy import save_file

from kernel.paths import UnsafePath, check_segment, is_within, split_relative
from tests.attack_payloads import (
    RAW_QUERY_PAYLOADS,
    SENTINEL_BYTES,
    attack_payloads,
    plant_escape_symlink,
    plant_sentinel,
)
from tests.kernel.files_helpers import png_bytes, raw_multipart, upload_form

ROOTS = ("input", "output", "temp")


def _literal_name(payload: str) -> bool:
    """A payload that is a harmless literal name once decoded once (may be stored inside a root)."""
    try:
        split_relative(payload)
    except UnsafePath:
        return False
    return "%" in payload


def _outside_state(base: Path) -> dict[str, tuple[int, int]]:
    roots = [os.path.realpath(base / r) for r in ROOTS]
    state: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if any(os.path.realpath(dirpath) == r or dirpath.startswith(r + os.sep) for r in roots):
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.realpath(path) in roots:
                continue
            st = os.lstat(path)
            state[path] = (st.st_size, st.st_mtime_ns)
    return state


class Arena:
    """A started server with a sentinel outside the roots and escaping links inside them."""

    def __init__(self, server: Any, base: Path) -> None:
        self.server = server
        self.base = base
        self.sentinel = plant_sentinel(base)
        secret_model = base / "outside" / "secret.safetensors"
        save_file(
            {"w": np.zeros(1, dtype=np.float32)}, str(secret_model), metadata={"s": SENTINEL_BYTES.decode()}
        )
        for root in ROOTS:
            plant_escape_symlink(base / root, self.sentinel)
            os.symlink(base / "outside", base / root / "linkdir")
        self.original = png_bytes(size=(2, 2))
        (base / "output" / "orig.png").write_bytes(self.original)
        self.before = _outside_state(base)
        self.payloads = attack_payloads(self.sentinel)
        self.checked = 0

    def check(self, status: int, body: bytes, what: str, *, literal_ok: bool = False) -> None:
        self.checked += 1
        assert SENTINEL_BYTES not in body, what
        if literal_ok and status == 200:
            return
        assert 400 <= status < 500, (what, status, body[:200])
        if status != 404 or body:
            assert "error" in json.loads(body), what

    def check_upload(
        self, status: int, body: bytes, sent_name: str, fields: dict[str, str], what: str
    ) -> None:
        """Like ``check``, but aiohttp's multipart parser rewrites some file names (it drops
        backslashes), so a 200 is acceptable when the *stored* name is safe and inside its root."""
        if status != 200:
            self.check(status, body, what)
            return
        assert SENTINEL_BYTES not in body, what
        stored = json.loads(body)["name"]
        subfolder = fields.get("subfolder", "")
        assert "linkdir" not in subfolder, what
        # Accepted only when the multipart parser already rewrote the file name into a harmless
        # plain one (encoded traversal such as %2e%2e%2f is refused by the resolver).
        split_relative(subfolder, allow_empty=True)
        assert check_segment(stored) == stored, what
        root = self.base / fields.get("type", "input")
        assert is_within(root, root / subfolder / stored) and (root / subfolder / stored).is_file(), what
        self.checked += 1

    def assert_nothing_outside_changed(self) -> None:
        assert self.sentinel.read_bytes() == SENTINEL_BYTES
        assert _outside_state(self.base) == self.before


@pytest.fixture
async def arena(comfy_server: Any, tmp_path: Path) -> Arena:
    server = await comfy_server(plugins=["models"])
    return Arena(server, tmp_path)


async def _get(arena: Arena, path: str, **kwargs: Any) -> tuple[int, bytes]:
    async with arena.server.get(path, **kwargs) as r:
        return r.status, await r.read()


async def _get_url(arena: Arena, url: str) -> tuple[int, bytes]:
    async with arena.server.session.get(yarl.URL(url, encoded=True)) as r:
        return r.status, await r.read()


async def test_attack_view(arena: Arena) -> None:
    assert len(arena.payloads) >= 14
    for p in arena.payloads:
        for file_type in ROOTS:
            for params in (
                {"filename": p, "type": file_type},
                {"filename": p + f" [{file_type}]"},
                {"filename": "secret.txt", "subfolder": p, "type": file_type},
                {"filename": "escape.png", "subfolder": p, "type": file_type},
                {"filename": p, "subfolder": "linkdir", "type": file_type},
            ):
                for extra in ({}, {"preview": "webp;90"}, {"channel": "a"}):
                    status, body = await _get(arena, "/view", params={**params, **extra})
                    arena.check(status, body, f"/view {params} {extra}")
        status, body = await _get(arena, "/view", params={"filename": "secret.txt", "type": p})
        arena.check(status, body, f"/view type={p!r}")
    for raw in RAW_QUERY_PAYLOADS:
        for key in ("filename", "subfolder"):
            query = f"{key}={raw}" + ("&filename=secret.txt" if key == "subfolder" else "")
            status, body = await _get_url(arena, f"{arena.server.url}/view?{query}")
            arena.check(status, body, f"raw /view?{query}")
    # The escaping symlink and a linked directory are refused by name too.
    for params in (
        {"filename": "escape.png", "type": "input"},
        {"filename": "secret.txt", "subfolder": "linkdir"},
    ):
        status, body = await _get(arena, "/view", params=params)
        assert status == 403, params
    assert arena.checked >= len(arena.payloads) * 46
    arena.assert_nothing_outside_changed()


async def test_attack_upload_image(arena: Arena) -> None:
    data = b"attack upload"
    for p in arena.payloads:
        for file_type in ROOTS:
            for fields in (
                {"filename": p, "type": file_type},
                {"filename": "ok.png", "subfolder": p, "type": file_type},
                {"filename": "ok.png", "subfolder": "linkdir", "type": file_type},
                {"filename": "ok.png", "subfolder": f"linkdir/{p}", "type": file_type},
                {"filename": p, "subfolder": "linkdir", "type": file_type},
            ):
                filename = fields.pop("filename")
                for overwrite in ("false", "true"):
                    body, headers = raw_multipart(data, filename, overwrite=overwrite, **fields)
                    async with arena.server.post("/upload/image", data=body, headers=headers) as r:
                        body = await r.read()
                        arena.check_upload(r.status, body, filename, fields, f"upload {filename!r} {fields}")
        if p == "":
            continue  # an empty type means the default, input
        form = upload_form(data, filename="ok.png", type=p)
        async with arena.server.post("/upload/image", data=form) as r:
            arena.check(r.status, await r.read(), f"upload type={p!r}")
    arena.assert_nothing_outside_changed()


async def test_attack_upload_mask(arena: Arena) -> None:
    mask = png_bytes(size=(2, 2))
    for p in arena.payloads:
        refs = [
            {"filename": p},
            {"filename": p + " [output]"},
            {"filename": "secret.txt", "subfolder": "linkdir"},
            {"filename": "escape.png", "type": "input"},
        ]
        if p:  # empty subfolder and type are the defaults
            refs += [{"filename": "orig.png", "subfolder": p}, {"filename": "orig.png", "type": p}]
        for ref in refs:
            form = upload_form(mask, filename="m.png", original_ref=json.dumps(ref))
            async with arena.server.post("/upload/mask", data=form) as r:
                arena.check(r.status, await r.read(), f"mask ref {ref}")
        targets = [{"filename": p}, {"filename": "m.png", "subfolder": p}]
        if p:
            targets.append({"filename": "m.png", "type": p})
        for fields in targets:
            filename = fields.pop("filename")
            body, headers = raw_multipart(mask, filename, original_ref='{"filename": "orig.png"}', **fields)
            async with arena.server.post("/upload/mask", data=body, headers=headers) as r:
                body = await r.read()
                arena.check_upload(r.status, body, filename, fields, f"mask target {filename!r} {fields}")
    arena.assert_nothing_outside_changed()


async def test_attack_view_metadata_and_listing(arena: Arena) -> None:
    url = arena.server.url
    for p in arena.payloads:
        for filename in (p, p.replace("secret.txt", "secret.safetensors"), p + ".safetensors"):
            status, body = await _get(arena, "/view_metadata/checkpoints", params={"filename": filename})
            arena.check(status, body, f"view_metadata filename={filename!r}")
        segment = quote(p, safe="")
        status, body = await _get_url(arena, f"{url}/view_metadata/{segment}?filename=secret.safetensors")
        arena.check(status, body, f"view_metadata folder={p!r}")
        status, body = await _get_url(arena, f"{url}/internal/files/{segment}")
        arena.check(status, body, f"internal/files/{p!r}")
    for file_type in ROOTS:
        status, body = await _get(arena, f"/internal/files/{file_type}")
        assert status == 200
        names = [name.removesuffix(f" [{file_type}]") for name in json.loads(body)]
        assert "escape.png" not in names and "linkdir" not in names
        assert SENTINEL_BYTES not in body
    arena.assert_nothing_outside_changed()


async def test_attack_encoded_traversal_names_are_refused(arena: Arena) -> None:
    # Names are decoded once (by HTTP); a name that would reveal a path when decoded again is
    # refused outright rather than stored literally, so no later consumer can be tricked by it.
    for name in ("%2e%2e%2fsecret.txt", "%252e%252e%252fsecret.txt", "..%5csecret.txt"):
        async with arena.server.post("/upload/image", data=upload_form(b"lit", filename=name)) as r:
            assert r.status == 400, name
            assert "percent-encoded" in (await r.json())["error"]
        assert not (arena.base / "input" / name).exists()
        status, body = await _get(arena, "/view", params={"filename": name, "type": "input"})
        assert 400 <= status < 500 and SENTINEL_BYTES not in body
    arena.assert_nothing_outside_changed()


async def test_attack_legitimate_odd_names_work(arena: Arena) -> None:
    for name in ("a..b.png", "ünïcödé 图像.png", "sp ace s.png", "..leading.png", "trailing..png"):
        for sub in ("", "sub dir/ünï"):
            form = upload_form(name.encode(), filename=name, subfolder=sub, type="output")
            async with arena.server.post("/upload/image", data=form) as r:
                assert r.status == 200, (name, sub)
                assert (await r.json())["name"] == name
            status, body = await _get(arena, "/view", params={"filename": name, "subfolder": sub})
            assert (status, body) == (200, name.encode()), (name, sub)
    arena.assert_nothing_outside_changed()
