"""GET /internal/files/{directory_type} and the roots the files plugin prepares at startup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


async def test_roots_created_and_temp_emptied_at_start(comfy_server: Any, tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    (temp / "old" / "nested").mkdir(parents=True)
    (temp / "old" / "nested" / "f.png").write_bytes(b"x")
    (temp / "stale.png").write_bytes(b"x")
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"keep me")
    os.symlink(outside, temp / "link-to-keep")
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "kept.png").write_bytes(b"o")
    await comfy_server()
    for name in ("input", "output", "temp"):
        assert (tmp_path / name).is_dir()
    assert list(temp.iterdir()) == []
    assert (outside / "precious.txt").read_bytes() == b"keep me"  # the link was removed, not followed
    assert (tmp_path / "output" / "kept.png").exists()


async def test_directory_flags_override_roots(comfy_server: Any, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    server = await comfy_server(
        output_directory=str(elsewhere / "out"), temp_directory=str(elsewhere / "tmp")
    )
    assert (elsewhere / "out").is_dir() and (elsewhere / "tmp").is_dir()
    (elsewhere / "out" / "f.png").write_bytes(b"flagged")
    async with server.get("/view", params={"filename": "f.png"}) as r:
        assert await r.read() == b"flagged"


async def test_temp_equal_to_base_is_not_wiped(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "important.txt").write_bytes(b"x")
    await comfy_server(temp_directory=str(tmp_path))
    assert (tmp_path / "important.txt").exists()


async def test_internal_files_lists_newest_first(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    out = tmp_path / "output"
    for i, name in enumerate(["old.png", "mid.png", "new.png"]):
        (out / name).write_bytes(b"x")
        os.utime(out / name, (1_000_000 + i, 1_000_000 + i))
    (out / ".hidden").write_bytes(b"x")
    (out / "subdir").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"s")
    os.symlink(tmp_path / "secret.txt", out / "escape.txt")
    os.symlink(out / "new.png", out / "alias.png")
    os.utime(out / "new.png", (1_000_003, 1_000_003))
    status, body = await server.json("GET", "/internal/files/output")
    assert status == 200
    # Each name carries its root, as the frontend's remote combos need (see listing.py).
    assert body[:2] in (
        ["alias.png [output]", "new.png [output]"],
        ["new.png [output]", "alias.png [output]"],
    )
    assert body[2:] == ["mid.png [output]", "old.png [output]"]
    status, body = await server.json("GET", "/internal/files/input")
    assert (status, body) == (200, [])
    (tmp_path / "input" / "in.png").write_bytes(b"x")
    status, body = await server.json("GET", "/internal/files/input")
    assert (status, body) == (200, ["in.png [input]"])


async def test_internal_files_bad_type_and_no_api_twin(comfy_server: Any) -> None:
    server = await comfy_server()
    for bad in ("models", "user", "..", "%2e%2e"):
        status, body = await server.json("GET", f"/internal/files/{bad}")
        assert status in (400, 404), bad
        if status == 400:
            assert body["error"].startswith("Invalid directory type")
    status, _ = await server.json("GET", "/internal/files/models")
    assert status == 400
    status, _ = await server.json("GET", "/api/internal/files/output")
    assert status == 404
