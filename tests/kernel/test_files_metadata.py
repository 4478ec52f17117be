"""GET /view_metadata/{folder_name}: safetensors ``__metadata__`` through the ``kernel.models`` seam."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from kernel.paths import UnsafePath, safe_join


class FakeModels:
    """A stand-in for the models plugin's ``kernel.models``: one folder kind, ``checkpoints``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get_full_path(self, folder_name: str, filename: str) -> Path | None:
        if folder_name != "checkpoints":
            return None
        try:
            path = safe_join(self.root, filename)
        except UnsafePath:
            return None
        return path if path.is_file() else None


def _raw_safetensors(path: Path, header: bytes, declared: int | None = None) -> None:
    size = len(header) if declared is None else declared
    path.write_bytes(struct.pack("<Q", size) + header)


async def _server_with_fake(comfy_server: Any, tmp_path: Path) -> tuple[Any, Path]:
    server = await comfy_server()
    root = tmp_path / "ckpts"
    root.mkdir()
    server.kernel.models = FakeModels(root)
    return server, root


async def test_view_metadata_returns_metadata(comfy_server: Any, tmp_path: Path) -> None:
    server, root = await _server_with_fake(comfy_server, tmp_path)
    meta = {"modelspec.title": "Tiny", "ss_network_dim": "4"}
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(root / "m.safetensors"), metadata=meta)
    status, body = await server.json(
        "GET", "/view_metadata/checkpoints", params={"filename": "m.safetensors"}
    )
    assert (status, body) == (200, meta)
    status, body = await server.json(
        "GET", "/api/view_metadata/checkpoints", params={"filename": "m.safetensors"}
    )
    assert (status, body) == (200, meta)


async def test_view_metadata_failures_are_404(comfy_server: Any, tmp_path: Path) -> None:
    server, root = await _server_with_fake(comfy_server, tmp_path)
    save_file({"w": np.zeros(1, dtype=np.float32)}, str(root / "nometa.safetensors"))
    (root / "m.ckpt").write_bytes(b"pickle")
    _raw_safetensors(root / "huge.safetensors", b"{}", declared=1024 * 1024 + 1)
    big_meta = json.dumps({"__metadata__": {"k": "v" * (1024 * 1024)}}).encode()
    _raw_safetensors(root / "big.safetensors", big_meta)
    _raw_safetensors(root / "short.safetensors", b"{}", declared=100)
    _raw_safetensors(root / "garbage.safetensors", b"\xff\xfe not json")
    _raw_safetensors(root / "list.safetensors", json.dumps({"__metadata__": [1]}).encode())
    (root / "tiny.safetensors").write_bytes(b"abc")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    save_file(
        {"w": np.zeros(1, dtype=np.float32)}, str(tmp_path / "outside.safetensors"), metadata={"secret": "1"}
    )
    cases = [
        ("/view_metadata/checkpoints", {}),
        ("/view_metadata/checkpoints", {"filename": ""}),
        ("/view_metadata/checkpoints", {"filename": "m.ckpt"}),
        ("/view_metadata/checkpoints", {"filename": "missing.safetensors"}),
        ("/view_metadata/loras", {"filename": "nometa.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "nometa.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "huge.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "big.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "short.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "garbage.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "list.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "tiny.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": "../outside.safetensors"}),
        ("/view_metadata/checkpoints", {"filename": str(tmp_path / "outside.safetensors")}),
    ]
    for path, params in cases:
        status, body = await server.json("GET", path, params=params)
        assert status == 404, (path, params, body)
        assert body["error"]


async def test_view_metadata_without_models_plugin_is_404(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server()
    assert server.kernel.models is None
    status, body = await server.json(
        "GET", "/view_metadata/checkpoints", params={"filename": "m.safetensors"}
    )
    assert status == 404 and "models plugin" in body["error"]


async def test_view_metadata_with_real_models_plugin(comfy_server: Any, tmp_path: Path) -> None:
    server = await comfy_server(plugins=["models"])
    assert server.kernel.models is not None
    folder = tmp_path / "models" / "checkpoints" / "sub"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.ones(3, dtype=np.float16)}, str(folder / "real.safetensors"), metadata={"a": "b"})
    status, body = await server.json(
        "GET", "/view_metadata/checkpoints", params={"filename": "sub/real.safetensors"}
    )
    assert (status, body) == (200, {"a": "b"})
    status, body = await server.json(
        "GET", "/view_metadata/checkpoints", params={"filename": "../checkpoints/sub/real.safetensors"}
    )
    assert status == 404
    status, body = await server.json(
        "GET", "/view_metadata/no_such_folder", params={"filename": "sub/real.safetensors"}
    )
    assert status == 404
