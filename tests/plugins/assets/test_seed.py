"""POST /api/assets/seed, its status and cancel; POST /api/assets/prune."""

from __future__ import annotations

import asyncio
import time

from plugins.assets import records
from tests.plugins.assets.helpers import PLUGINS

N_FILES = 10_000


def _make_tree(root, n):
    paths = []
    for i in range(n):
        folder = root / f"d{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i:05d}.txt"
        path.write_bytes(b"file %d\n" % i)
        paths.append(path)
    return paths


async def _wait_done(server, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        status, body = await server.json("GET", "/api/assets/seed/status")
        assert status == 200
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def _seed(server, roots=None):
    payload = {} if roots is None else {"roots": roots}
    status, body = await server.json("POST", "/api/assets/seed", json=payload)
    assert status == 200 and body == {"status": "started"}
    return await _wait_done(server)


async def test_seed_10000_files_cancel_reseed_and_prune(comfy_server, monkeypatch):
    server = await comfy_server(plugins=PLUGINS)
    paths = _make_tree(server.kernel.settings.input_path, N_FILES)

    # A slowed-down hasher makes "midway" certain: cancel once some files are in.
    real_describe = records.describe

    def slow_describe(*args, **kwargs):
        time.sleep(0.002)
        return real_describe(*args, **kwargs)

    monkeypatch.setattr(records, "describe", slow_describe)
    status, body = await server.json("POST", "/api/assets/seed", json={"roots": ["input"]})
    assert body == {"status": "started"}
    status, body = await server.json("POST", "/api/assets/seed", json={"roots": ["input"]})
    assert status == 200 and body == {"status": "already_running"}
    deadline = time.monotonic() + 30
    while True:
        _, progress = await server.json("GET", "/api/assets/seed/status")
        if progress["scanned"] >= 300:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert progress["status"] == "running" and progress["total"] == N_FILES
    assert 0 < progress["progress"] < 1
    status, body = await server.json("POST", "/api/assets/seed/cancel")
    assert status == 200 and body == {"status": "cancelling"}
    cancelled = await _wait_done(server)
    assert cancelled["status"] == "cancelled"
    assert 300 <= cancelled["scanned"] < N_FILES
    _, listing = await server.json("GET", "/api/assets?limit=1")
    partial = listing["total"]
    assert 0 < partial < N_FILES
    status, body = await server.json("POST", "/api/assets/seed/cancel")
    assert body == {"status": "not_running"}
    monkeypatch.undo()

    started = time.monotonic()
    done = await _seed(server, ["input"])
    elapsed = time.monotonic() - started
    assert done["status"] == "completed", done
    assert done["total"] == N_FILES and done["scanned"] == N_FILES
    assert done["created"] == N_FILES - partial and done["skipped"] == partial
    assert done["errors"] == 0 and done["progress"] == 1.0
    assert done["finished_at"] >= done["started_at"]
    _, listing = await server.json("GET", "/api/assets?limit=1&include_tags=input")
    assert listing["total"] == N_FILES
    assert elapsed < 45

    again = await _seed(server, ["input"])
    assert again["status"] == "completed"
    assert again["created"] == 0 and again["hashed"] == 0 and again["updated"] == 0
    assert again["skipped"] == N_FILES
    _, listing = await server.json("GET", "/api/assets?limit=1")
    assert listing["total"] == N_FILES

    gone = paths[::271]  # 37 files
    for path in gone:
        path.unlink()
    status, body = await server.json("POST", "/api/assets/prune")
    assert status == 200 and body == {"status": "completed", "marked": len(gone)}
    _, missing = await server.json("GET", "/api/assets?include_tags=missing&limit=500&sort=name&order=asc")
    assert missing["total"] == len(gone)
    assert [a["name"] for a in missing["assets"]] == sorted(p.name for p in gone)
    assert all(a["metadata"]["type"] == "input" for a in missing["assets"])
    # Never hard-deleted; a second prune marks nothing new.
    _, listing = await server.json("GET", "/api/assets?limit=1")
    assert listing["total"] == N_FILES
    _, body = await server.json("POST", "/api/assets/prune")
    assert body["marked"] == 0
    # A file that comes back loses the tag.
    gone[0].write_bytes(b"back again")
    _, body = await server.json("POST", "/api/assets/prune")
    assert body["marked"] == 0
    _, missing = await server.json("GET", "/api/assets?include_tags=missing&limit=1")
    assert missing["total"] == len(gone) - 1


async def test_seed_default_roots_tags_models_input_output(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    settings = server.kernel.settings
    ckpt_dir = server.kernel.models.folder_paths("checkpoints")[0]
    (ckpt_dir / "sub").mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "sub" / "model.safetensors").write_bytes(b"weights")
    (ckpt_dir / "readme.txt").write_bytes(b"not a model")  # wrong extension for the folder
    (settings.input_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    (settings.output_path / "run").mkdir(parents=True, exist_ok=True)
    (settings.output_path / "run" / "out.txt").write_bytes(b"output")
    (settings.input_path / ".hidden").write_bytes(b"skip me")
    done = await _seed(server)
    assert done["status"] == "completed" and done["created"] == 3, done
    _, listing = await server.json("GET", "/api/assets?sort=name&order=asc")
    by_name = {a["name"]: a for a in listing["assets"]}
    assert set(by_name) == {"out.txt", "pic.png", "sub/model.safetensors"}
    model = by_name["sub/model.safetensors"]
    assert model["tags"] == ["models", "checkpoints"]
    assert model["metadata"] == {"folder": "checkpoints", "filename": "sub/model.safetensors"}
    assert model["mime_type"] == "application/safetensors"
    assert by_name["pic.png"]["tags"] == ["input"] and by_name["pic.png"]["mime_type"] == "image/png"
    assert by_name["out.txt"]["metadata"] == {"type": "output", "subfolder": "run", "filename": "out.txt"}
    # A changed file is re-hashed on the next seed, keeping its record.
    (settings.output_path / "run" / "out.txt").write_bytes(b"output, longer now")
    done = await _seed(server, ["output"])
    assert done["created"] == 0 and done["updated"] == 1
    _, fetched = await server.json("GET", f"/api/assets/{by_name['out.txt']['id']}")
    assert fetched["size"] == len(b"output, longer now")
    assert fetched["asset_hash"] != by_name["out.txt"]["asset_hash"]


async def test_seed_status_idle_and_bad_bodies(comfy_server):
    server = await comfy_server(plugins=PLUGINS)
    status, body = await server.json("GET", "/api/assets/seed/status")
    assert status == 200 and body["status"] == "idle" and body["total"] == 0
    for payload in ({"roots": ["elsewhere"]}, {"roots": "input"}, {"roots": []}, {"roots": [1]}, [1]):
        status, body = await server.json("POST", "/api/assets/seed", json=payload)
        assert status == 400, payload
        assert body["error"]["code"] in ("INVALID_BODY", "INVALID_JSON"), payload
    status, body = await server.json("POST", "/api/assets/seed", data=b"{nope")
    assert status == 400 and body["error"]["code"] == "INVALID_JSON"
    status, body = await server.json("POST", "/api/assets/prune")
    assert status == 200 and body == {"status": "completed", "marked": 0}


async def test_seed_without_models_plugin_scans_input_and_output(comfy_server):
    server = await comfy_server(plugins=["assets"])
    assert server.kernel.models is None
    (server.kernel.settings.input_path).mkdir(parents=True, exist_ok=True)
    (server.kernel.settings.input_path / "a.txt").write_bytes(b"a")
    done = await _seed(server)
    assert done["status"] == "completed" and done["created"] == 1
