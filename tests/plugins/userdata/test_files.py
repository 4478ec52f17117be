"""/userdata/{file} (GET, POST, DELETE, move), GET /userdata and GET /v2/userdata over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from tests.plugins.userdata.helpers import raw, user_root


@pytest.fixture
async def server(comfy_server):
    return await comfy_server(plugins=["userdata"])


def put(server, rel: str, data: bytes = b"x") -> None:
    path = user_root(server) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --- the frontend's workflow round trip --------------------------------------------------------


async def test_frontend_workflow_save_list_open_rename_delete(server):
    workflow = json.dumps({"nodes": [], "links": [], "version": 0.4}).encode()
    status, body, _ = await raw(
        server, "POST", "/api/userdata/workflows%2Fx.json?overwrite=true&full_info=true", data=workflow
    )
    assert status == 200
    info = json.loads(body)
    assert info["path"] == "workflows/x.json" and info["size"] == len(workflow)
    assert isinstance(info["modified"], int) and isinstance(info["created"], int)
    assert abs(info["modified"] - time.time() * 1000) < 60_000

    status, body, _ = await raw(
        server, "GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"
    )
    assert status == 200
    # Listing paths are relative to ``dir``; the POST answer's path is relative to the user root.
    assert json.loads(body) == [{**info, "path": "x.json"}]

    status, body, _ = await raw(server, "GET", "/api/userdata/workflows%2Fx.json")
    assert (status, body) == (200, workflow)

    status, body, _ = await raw(server, "POST", "/api/userdata/workflows%2Fx.json/move/workflows%2Fb.json")
    assert (status, json.loads(body)) == (200, "workflows/b.json")
    assert not (user_root(server) / "workflows/x.json").exists()

    status, body, _ = await raw(server, "GET", "/api/userdata?dir=workflows&recurse=true")
    assert json.loads(body) == ["b.json"]

    status, body, _ = await raw(server, "DELETE", "/api/userdata/workflows%2Fb.json")
    assert (status, body) == (204, b"")
    status, body, _ = await raw(server, "GET", "/api/userdata?dir=workflows")
    assert json.loads(body) == []


# --- POST /userdata/{file} ----------------------------------------------------------------------


async def test_post_writes_raw_body_and_answers_relative_path(server):
    payload = bytes(range(256)) * 10
    status, body, _ = await raw(
        server, "POST", "/userdata/a%2Fb%2Fblob.bin", data=payload, headers={"Content-Type": "image/png"}
    )
    assert (status, json.loads(body)) == (200, os.path.join("a", "b", "blob.bin"))
    assert (user_root(server) / "a/b/blob.bin").read_bytes() == payload


async def test_post_double_encoded_slash_is_nested(server):
    status, body, _ = await raw(server, "POST", "/userdata/workflows%252Fy.json", data=b"{}")
    assert (status, json.loads(body)) == (200, "workflows/y.json")
    assert (user_root(server) / "workflows" / "y.json").read_bytes() == b"{}"


async def test_post_percent_without_escape_is_kept_literally(server):
    status, body, _ = await raw(server, "POST", "/userdata/100%25.json", data=b"1")
    assert (status, json.loads(body)) == (200, "100%.json")
    assert (user_root(server) / "100%.json").read_bytes() == b"1"


async def test_post_overwrite_default_true_and_literal_false_refuses(server):
    put(server, "f.txt", b"old")
    status, _, _ = await raw(server, "POST", "/userdata/f.txt", data=b"new")
    assert status == 200 and (user_root(server) / "f.txt").read_bytes() == b"new"

    status, body, _ = await raw(server, "POST", "/userdata/f.txt?overwrite=false", data=b"newer")
    assert (status, body) == (409, b"File already exists")
    assert (user_root(server) / "f.txt").read_bytes() == b"new"

    # Only the literal "false" disables overwriting (the reference compares case-sensitively).
    status, _, _ = await raw(server, "POST", "/userdata/f.txt?overwrite=FALSE", data=b"newest")
    assert status == 200 and (user_root(server) / "f.txt").read_bytes() == b"newest"

    status, _, _ = await raw(server, "POST", "/userdata/g.txt?overwrite=false", data=b"fresh")
    assert status == 200 and (user_root(server) / "g.txt").read_bytes() == b"fresh"


async def test_post_full_info_flag_is_case_insensitive_true_only(server):
    status, body, _ = await raw(server, "POST", "/userdata/i.json?full_info=TRUE", data=b"12")
    assert set(json.loads(body)) == {"path", "size", "modified", "created"}
    status, body, _ = await raw(server, "POST", "/userdata/i.json?full_info=1", data=b"12")
    assert json.loads(body) == "i.json"


async def test_post_concurrent_writes_are_atomic_and_leave_no_temp_files(server):
    bodies = [bytes([65 + i]) * 300_000 for i in range(12)]
    results = await asyncio.gather(*(raw(server, "POST", "/userdata/big.bin", data=b) for b in bodies))
    assert all(status == 200 for status, _, _ in results)
    assert (user_root(server) / "big.bin").read_bytes() in bodies
    assert os.listdir(user_root(server)) == ["big.bin"]


async def test_post_concurrent_no_overwrite_exactly_one_wins(server):
    results = await asyncio.gather(
        *(raw(server, "POST", "/userdata/once.txt?overwrite=false", data=str(i).encode()) for i in range(10))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [409] * 9
    assert os.listdir(user_root(server)) == ["once.txt"]


async def test_post_os_error_is_400_with_reason_phrase(server):
    put(server, "plain", b"file, not folder")
    status, body, resp = await raw(server, "POST", "/userdata/plain%2Fchild.json", data=b"{}")
    assert status == 400 and body == b""
    assert resp.reason == 'Invalid filename. Please avoid special characters like :\\/*?"<>|'
    (user_root(server) / "adir").mkdir()
    status, _, resp = await raw(server, "POST", "/userdata/adir", data=b"{}")
    assert status == 400 and resp.reason.startswith("Invalid filename")
    assert (user_root(server) / "adir").is_dir()


async def test_post_longest_legal_name_works(server):
    name = "n" * 250 + ".json"
    status, body, _ = await raw(server, "POST", f"/userdata/{name}", data=b"{}")
    assert (status, json.loads(body)) == (200, name)
    assert os.listdir(user_root(server)) == [name]


@pytest.mark.parametrize("segment", ["%25ff.json", "%ff.json", "%25C3.json"])
async def test_undecodable_names_are_4xx(server, segment):
    for method in ("GET", "POST", "DELETE"):
        status, _, _ = await raw(server, method, f"/userdata/{segment}", data=b"x")
        assert 400 <= status < 500, (method, segment, status)
    assert not user_root(server).exists() or os.listdir(user_root(server)) == []


@pytest.mark.parametrize("name", ["%2E", ".%2F", "%252E"])
async def test_empty_names_are_400(server, name):
    for method in ("GET", "POST", "DELETE"):
        status, _, _ = await raw(server, method, f"/userdata/{name}", data=b"x")
        assert status == 400, (method, name)


# --- GET /userdata/{file} -----------------------------------------------------------------------


async def test_get_missing_file_and_directory_are_404(server):
    status, _, _ = await raw(server, "GET", "/userdata/nope.json")
    assert status == 404
    (user_root(server) / "folder").mkdir(parents=True)
    status, _, _ = await raw(server, "GET", "/userdata/folder")
    assert status == 404


@pytest.mark.parametrize(
    ("name", "content_type", "disposition"),
    [
        ("w.json", "application/json", "attachment"),
        ("notes.txt", "text/plain", "attachment"),
        ("pic.png", "image/png", "attachment"),
        ("page.html", "application/octet-stream", "attachment"),
        ("evil.svg", "application/octet-stream", "attachment"),
        ("script.js", "application/octet-stream", "attachment"),
        ("data.xml", "application/octet-stream", "attachment"),
        ("sub/user.css", "application/octet-stream", "attachment"),
        ("user.css", "text/css", "inline"),
        ("noext", "application/octet-stream", "attachment"),
    ],
)
async def test_get_content_type_policy(server, name, content_type, disposition):
    put(server, name, b"<script>alert(1)</script>")
    status, body, resp = await raw(server, "GET", "/userdata/" + name.replace("/", "%2F"))
    assert (status, body) == (200, b"<script>alert(1)</script>")
    assert resp.content_type == content_type
    assert resp.headers["Content-Disposition"] == disposition
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    if content_type == "application/octet-stream" and name != "noext":
        assert resp.headers["Cache-Control"] == "no-store"


# --- DELETE /userdata/{file} --------------------------------------------------------------------


async def test_delete_file_missing_and_directory(server):
    put(server, "d/x.txt")
    status, _, _ = await raw(server, "DELETE", "/userdata/d%2Fx.txt")
    assert status == 204 and not (user_root(server) / "d/x.txt").exists()
    status, _, _ = await raw(server, "DELETE", "/userdata/d%2Fx.txt")
    assert status == 404
    status, body, _ = await raw(server, "DELETE", "/userdata/d")
    assert status == 400 and (user_root(server) / "d").is_dir()


# --- POST /userdata/{file}/move/{dest} ----------------------------------------------------------


async def test_move_overwrite_and_full_info(server):
    put(server, "a.json", b"A")
    put(server, "b.json", b"B")
    status, body, _ = await raw(server, "POST", "/userdata/a.json/move/b.json?overwrite=false")
    assert (status, body) == (409, b"File already exists")
    assert (user_root(server) / "a.json").read_bytes() == b"A"
    assert (user_root(server) / "b.json").read_bytes() == b"B"

    status, body, _ = await raw(server, "POST", "/userdata/a.json/move/b.json?full_info=true")
    assert status == 200
    info = json.loads(body)
    assert info["path"] == "b.json" and info["size"] == 1 and isinstance(info["modified"], int)
    assert (user_root(server) / "b.json").read_bytes() == b"A"
    assert not (user_root(server) / "a.json").exists()


async def test_move_creates_parents_and_handles_double_encoding(server):
    put(server, "w.json", b"W")
    status, body, _ = await raw(server, "POST", "/userdata/w.json/move/deep%252Fer%2Fw2.json?overwrite=false")
    assert (status, json.loads(body)) == (200, os.path.join("deep", "er", "w2.json"))
    assert (user_root(server) / "deep/er/w2.json").read_bytes() == b"W"


async def test_move_missing_source_404_and_folders(server):
    status, _, _ = await raw(server, "POST", "/userdata/ghost.json/move/x.json")
    assert status == 404
    put(server, "f1/a.json")
    put(server, "f2/b.json")
    status, _, _ = await raw(server, "POST", "/userdata/f1/move/f2")
    assert status == 409
    assert (user_root(server) / "f1/a.json").exists() and (user_root(server) / "f2/b.json").exists()
    status, body, _ = await raw(server, "POST", "/userdata/f1/move/f3")
    assert (status, json.loads(body)) == (200, "f3")
    assert (user_root(server) / "f3/a.json").exists()
    # A folder cannot move into itself.
    status, _, resp = await raw(server, "POST", "/userdata/f3/move/f3%2Finner")
    assert status == 400 and (user_root(server) / "f3/a.json").exists()


# --- GET /userdata (v1 listing) -----------------------------------------------------------------


@pytest.fixture
def tree(server):
    for rel in ["w/a.json", "w/B.json", "w/.hidden", "w/sub/c.json", "w/sub/.h2", "w/.hdir/d.json"]:
        put(server, rel, rel.encode())
    (user_root(server) / "w" / "emptydir").mkdir()
    return server


async def test_list_v1_flags(tree):
    server = tree
    status, body = await server.json("GET", "/userdata", params={"dir": "w"})
    assert status == 200 and sorted(body) == ["B.json", "a.json"]
    status, body = await server.json("GET", "/api/userdata", params={"dir": "w", "recurse": "True"})
    assert sorted(body) == ["B.json", "a.json", "sub/c.json"]
    status, body = await server.json("GET", "/userdata", params={"dir": "w", "recurse": "1"})
    assert sorted(body) == ["B.json", "a.json"]
    status, body = await server.json(
        "GET", "/userdata", params={"dir": "w", "recurse": "true", "split": "true"}
    )
    assert sorted(body) == [["B.json", "B.json"], ["a.json", "a.json"], ["sub/c.json", "sub", "c.json"]]
    status, body = await server.json(
        "GET", "/userdata", params={"dir": "w", "recurse": "true", "split": "true", "full_info": "true"}
    )
    by_path = {item["path"]: item for item in body}
    assert sorted(by_path) == ["B.json", "a.json", "sub/c.json"]
    st = (user_root(server) / "w/sub/c.json").stat()
    assert by_path["sub/c.json"] == {
        "path": "sub/c.json",
        "size": len(b"w/sub/c.json"),
        "modified": st.st_mtime_ns // 1_000_000,
        "created": st.st_ctime_ns // 1_000_000,
    }


async def test_list_v1_nested_dir_and_errors(tree):
    server = tree
    status, body = await server.json("GET", "/userdata", params={"dir": "w/sub"})
    assert body == ["c.json"]
    # The reference decodes a second time: %2F inside the (already decoded) value is a slash.
    status, body = await server.json("GET", "/userdata", params={"dir": "w%2Fsub"})
    assert body == ["c.json"]
    status, body, _ = await raw(server, "GET", "/userdata")
    assert (status, body) == (400, b"Directory not provided")
    status, body, _ = await raw(server, "GET", "/userdata?dir=")
    assert (status, body) == (400, b"Directory not provided")
    status, body, _ = await raw(server, "GET", "/userdata?dir=nothere")
    assert (status, body) == (404, b"Directory not found")
    status, body, _ = await raw(server, "GET", "/userdata?dir=..%2Fother")
    assert (status, body) == (403, b"Invalid directory")


async def test_list_v1_user_root_missing_is_404(server):
    status, body, _ = await raw(server, "GET", "/userdata?dir=workflows")
    assert (status, body) == (404, b"Directory not found")


# --- GET /v2/userdata ---------------------------------------------------------------------------


async def test_list_v2_tree_order_and_units(tree):
    server = tree
    status, body = await server.json("GET", "/v2/userdata")
    assert status == 200
    assert [(e["type"], e["path"]) for e in body] == [
        ("directory", "w/.hdir"),
        ("directory", "w/emptydir"),
        ("directory", "w/sub"),
        ("directory", "w"),
        ("file", "w/sub/.h2"),
        ("file", "w/.hidden"),
        ("file", "w/a.json"),
        ("file", "w/B.json"),
        ("file", "w/sub/c.json"),
        ("file", "w/.hdir/d.json"),
    ]
    by_path = {e["path"]: e for e in body}
    st = (user_root(server) / "w/a.json").stat()
    assert by_path["w/a.json"] == {
        "name": "a.json",
        "path": "w/a.json",
        "type": "file",
        "size": len(b"w/a.json"),
        "modified": st.st_mtime,
    }
    assert isinstance(by_path["w/a.json"]["modified"], float)
    assert by_path["w"] == {"name": "w", "path": "w", "type": "directory"}


async def test_list_v2_subpath_keeps_root_relative_paths(tree):
    server = tree
    status, body = await server.json("GET", "/api/v2/userdata", params={"path": "w/sub"})
    assert [(e["name"], e["path"]) for e in body] == [(".h2", "w/sub/.h2"), ("c.json", "w/sub/c.json")]
    status, body = await server.json("GET", "/v2/userdata", params={"path": "w%2Fsub"})
    assert [e["path"] for e in body] == ["w/sub/.h2", "w/sub/c.json"]


async def test_list_v2_errors(tree):
    server = tree
    status, body, _ = await raw(server, "GET", "/v2/userdata?path=nothere")
    assert (status, body) == (404, b"Path not found")
    status, body, _ = await raw(server, "GET", "/v2/userdata?path=w%2Fa.json")
    assert (status, body) == (400, b"Requested path is not a directory")
    status, body, _ = await raw(server, "GET", "/v2/userdata?path=..")
    assert (status, body) == (400, b"Invalid path requested")


async def test_list_v2_missing_user_root_is_empty(server):
    status, body = await server.json("GET", "/v2/userdata")
    assert (status, body) == (200, [])


async def test_startup_removes_temp_files_left_by_a_killed_write(comfy_server, tmp_path):
    user_dir = tmp_path / "user" / "default" / "workflows"
    user_dir.mkdir(parents=True)
    stale = user_dir / ".userdata-abc123.tmp"
    stale.write_bytes(b"half a write")
    kept = user_dir / "kept.json"
    kept.write_text("{}")
    server = await comfy_server(plugins=["userdata"])
    assert not stale.exists()
    assert kept.read_text() == "{}"
    status, listing = await server.json("GET", "/userdata?dir=workflows")
    assert status == 200 and listing == ["kept.json"]
