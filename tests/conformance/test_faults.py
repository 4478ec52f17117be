"""Faults as tests: clients that vanish mid-upload, and bodies that are not what a route reads.

kill -9 during writes lives in test_kill9_writes.py (it needs a server process to kill).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conformance.spec import Operation, operations

# Files SQLite may create or touch on any request; everything else new under the base is a leak.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000005000160e9e7a00000000049454e44ae426082"
)


def _files(base: Path) -> set[Path]:
    return {
        p.relative_to(base)
        for p in base.rglob("*")
        if p.is_file() and not p.name.endswith(_SQLITE_SIDE_FILES) and not p.name.endswith(".log")
    }


async def _send_and_vanish(url: str, head: str, body_start: bytes, base: Path) -> set[Path]:
    """Send the headers and the start of a body that claims to be far longer, then drop the socket.

    Returns the files that existed under ``base`` while the upload was in flight.
    """
    parts = urlsplit(url)
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(head.encode("latin-1") + body_start)
    await writer.drain()
    await asyncio.sleep(0.3)  # let the handler start reading (and, for streamed uploads, writing)
    in_flight = _files(base)
    writer.transport.abort()  # an RST, as when a client crashes or a network drops
    await asyncio.sleep(0.5)
    return in_flight


def _multipart_head(path: str, boundary: str, length: int) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    )


def _file_part_start(boundary: str, field: str, filename: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


@pytest.fixture
async def full_server(comfy_server: Any, tmp_path: Path) -> Any:
    return await comfy_server(plugins=None)


@pytest.mark.parametrize(
    ("path", "field"),
    [("/upload/image", "image"), ("/api/upload/mask", "image"), ("/api/assets", "file")],
)
async def test_disconnect_mid_multipart_upload_leaves_no_file(
    full_server: Any, tmp_path: Path, path: str, field: str
) -> None:
    before = _files(tmp_path)
    boundary = "faultboundary"
    start = _file_part_start(boundary, field, "partial.png") + PNG_1PX + b"\0" * 256 * 1024
    head = _multipart_head(path, boundary, 8 * 1024 * 1024)
    in_flight = await _send_and_vanish(full_server.url, head, start, tmp_path)
    if path == "/api/assets":
        # Streamed to a temp file as it arrives: proof the cleanup below had something to clean.
        assert in_flight - before, "expected a temp file while the upload was in flight"
    assert _files(tmp_path) - before == set()
    # The server is still healthy, and a complete upload of the same name still works.
    status, _ = await full_server.json("GET", "/system_stats")
    assert status == 200


async def test_disconnect_mid_userdata_write_leaves_no_file(full_server: Any, tmp_path: Path) -> None:
    status, _ = await full_server.json("POST", "/userdata/keep.json", data=b'{"v": 1}')
    assert status == 200
    before = _files(tmp_path)
    for name in ("partial.json", "keep.json"):
        head = (
            f"POST /api/userdata/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 4000000\r\n\r\n"
        )
        await _send_and_vanish(full_server.url, head, b'{"v": 2, "pad": "' + b"x" * 200_000, tmp_path)
    assert _files(tmp_path) - before == set()
    # The existing file kept its old content: a half-sent body never replaces it.
    async with full_server.get("/userdata/keep.json") as resp:
        assert resp.status == 200 and await resp.read() == b'{"v": 1}'


async def test_completed_multipart_upload_after_a_vanished_one(full_server: Any, tmp_path: Path) -> None:
    boundary = "faultboundary"
    start = _file_part_start(boundary, "image", "same.png") + PNG_1PX
    head = _multipart_head("/upload/image", boundary, 10_000_000)
    await _send_and_vanish(full_server.url, head, start, tmp_path)
    form = aiohttp.FormData()
    form.add_field("image", io.BytesIO(PNG_1PX), filename="same.png", content_type="image/png")
    status, body = await full_server.json("POST", "/upload/image", data=form)
    assert status == 200 and body["name"] == "same.png"
    assert (tmp_path / "input" / "same.png").read_bytes() == PNG_1PX


# --- malformed bodies on every operation that reads one ---------------------------------------

# Operations whose handler does not parse a body the reference way, with the status we answer
# and why. Every other body-taking operation must answer 4xx to a malformed or mistyped body.
BODY_IGNORED = {
    "interruptExecution": (200, "the reference treats a bad body as 'interrupt whatever runs'"),
    "writeUserdataFile": (200, "the body is the file's raw bytes, whatever its content type"),
    "cancelAssetSeed": (200, "takes no body"),
    "pruneAssets": (200, "takes no body"),
    "moveUserdataFile": (200, "takes no body: the move happens whatever is sent"),
    "cancelJob": (200, "takes no body; an unknown job answers {'cancelled': false}"),
}


async def _fixtures(server: Any) -> dict[str, str]:
    """Path parameters naming things that exist, so a body check is not hidden behind a 404."""
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"fault test asset"), filename="fault.txt", content_type="text/plain")
    status, asset = await server.json("POST", "/api/assets", data=form)
    assert status in (200, 201), asset
    status, _ = await server.json("POST", "/userdata/src.json", data=b"{}")
    assert status == 200
    return {
        "id": asset["id"],
        "file": "src.json",
        "dest": "moved.json",
        "job_id": str(uuid.uuid4()),
        "prompt_id": str(uuid.uuid4()),
    }


def _fill(path: str, params: dict[str, str], op_id: str) -> str:
    if op_id in ("getSetting", "updateSetting"):
        params = {**params, "id": "Comfy.FaultTest"}
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


# The reference's POST routes the spec leaves out (see route_extras.yaml).
_JSON_BODY = {"requestBody": {"content": {"application/json": {}}}}
EXTRA_BODY_OPERATIONS = [
    Operation("POST", "/api/jobs/cancel", "cancelJobs", _JSON_BODY),
    Operation("POST", "/api/jobs/{job_id}/cancel", "cancelJob", {}),
]


def _body_operations() -> list[Any]:
    ops = [op for op in operations() if "requestBody" in op.spec or op.method == "POST"]
    ops += EXTRA_BODY_OPERATIONS
    return sorted(ops, key=lambda op: op.operation_id)


def _bad_bodies(op: Any) -> list[tuple[str, bytes, str]]:
    content = op.spec.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        return [
            ("json instead of multipart", b'{"image": "x", "file": "x"}', "application/json"),
            (
                "truncated multipart",
                b"--b\r\nContent-Disposition: form-da",
                "multipart/form-data; boundary=b",
            ),
            ("multipart without boundary", b"--b\r\n\r\n", "multipart/form-data"),
        ]
    return [
        ("truncated JSON", b'{"prompt": {"1": ', "application/json"),
        ("not JSON at all", b"\xff\xfe not json", "application/json"),
        ("a form instead of JSON", b"a=1&b=%7B", "application/x-www-form-urlencoded"),
    ]


def test_body_operations_are_all_covered() -> None:
    ids = {op.operation_id for op in _body_operations()}
    # Every spec POST plus the PUT/PATCH/DELETE operations that carry a body.
    assert len([op for op in operations() if op.method == "POST"]) == 18
    assert {"updateAsset", "subscribeToLogs", "removeAssetTags"} <= ids
    assert set(BODY_IGNORED) <= ids


async def test_malformed_body_is_a_clean_4xx_on_every_body_operation(full_server: Any) -> None:
    # One server for all cases (a server per case would cost minutes on a small machine);
    # every failure is collected so one run shows them all.
    params = await _fixtures(full_server)
    failures: list[str] = []
    checked = 0
    for op in _body_operations():
        path = _fill(op.path, params, op.operation_id)
        for label, body, ctype in _bad_bodies(op):
            if op.operation_id == "moveUserdataFile":  # each case moves the source away
                assert (await full_server.json("POST", "/userdata/src.json", data=b"{}"))[0] == 200
            headers = {"Content-Type": ctype}
            async with full_server.request(op.method, path, data=body, headers=headers) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
                is_json = resp.content_type == "application/json"
            checked += 1
            where = f"{op.operation_id} ({op.method} {path}) with {label}: {status} {text[:160]!r}"
            if "Traceback" in text:
                failures.append("traceback leaked: " + where)
            expected = BODY_IGNORED.get(op.operation_id)
            if expected is not None:
                if status != expected[0]:
                    failures.append(where)
            elif not 400 <= status < 500:
                failures.append(where)
            elif is_json and text.strip():
                try:
                    json.loads(text)
                except ValueError:
                    failures.append("invalid JSON error body: " + where)
    assert checked == sum(len(_bad_bodies(op)) for op in _body_operations()) == 69
    assert not failures, "\n".join(failures)
