"""The shared path-traversal payloads against {file}, {dest}, dir and path: 4xx, nothing leaks.

Besides the status, each test checks that the sentinel's bytes never come back, that the sentinel
is unchanged and that nothing new appears outside the user's folder.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest

from tests.attack_payloads import (
    RAW_QUERY_PAYLOADS,
    SENTINEL_BYTES,
    attack_payloads,
    plant_escape_symlink,
    plant_sentinel,
    snapshot_outside,
)
from tests.plugins.userdata.helpers import raw, user_root

WRITE_MARK = b"ATTACKER-WROTE-THIS"


class Scene:
    """A server whose user folder holds a legit file and symlinks leading to a sentinel outside."""

    def __init__(self, server, base, sentinel):
        self.server = server
        self.base = base
        self.sentinel = sentinel
        self.root = user_root(server)
        self.before = snapshot_outside(base, [self.root])

    @property
    def payloads(self) -> list[str]:
        return attack_payloads(self.sentinel) + ["escape_dir/secret.txt", "escape_dir"]

    def assert_untouched(self) -> None:
        assert self.sentinel.read_bytes() == SENTINEL_BYTES
        assert snapshot_outside(self.base, [self.root]) == self.before
        for dirpath, _, filenames in os.walk(self.base):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    with open(path, "rb") as handle:
                        assert WRITE_MARK not in handle.read(), path


@pytest.fixture
async def scene(comfy_server, tmp_path):
    sentinel = plant_sentinel(tmp_path)
    server = await comfy_server(plugins=["userdata"])
    root = user_root(server)
    root.mkdir(parents=True)
    plant_escape_symlink(root, sentinel)
    os.symlink(sentinel.parent, root / "escape_dir")
    (root / "legit.json").write_bytes(b"{}")
    return Scene(server, tmp_path, sentinel)


def _is_4xx(status: int) -> bool:
    return 400 <= status < 500


async def _expect_refusals(scene: Scene, requests: list[tuple[str, str]]) -> None:
    failures = []
    for method, path in requests:
        status, body, _ = await raw(scene.server, method, path, data=WRITE_MARK)
        if not _is_4xx(status) or SENTINEL_BYTES in body:
            failures.append((method, path, status, body[:80]))
    assert failures == []
    scene.assert_untouched()


async def test_file_parameter_refuses_every_payload(scene):
    requests = []
    for payload in scene.payloads:
        segment = quote(payload, safe="")
        requests += [("GET", f"/userdata/{segment}"), ("POST", f"/userdata/{segment}")]
        requests += [("DELETE", f"/userdata/{segment}"), ("POST", f"/api/userdata/{segment}?overwrite=false")]
    for encoded in RAW_QUERY_PAYLOADS:
        requests += [("GET", f"/userdata/{encoded}"), ("POST", f"/userdata/{encoded}")]
    await _expect_refusals(scene, requests)
    assert os.path.islink(scene.root / "escape.png")
    assert sorted(os.listdir(scene.root)) == ["escape.png", "escape_dir", "legit.json"]


async def test_move_source_refuses_every_payload(scene):
    requests = [
        ("POST", f"/userdata/{quote(payload, safe='')}/move/stolen.json") for payload in scene.payloads
    ]
    requests += [("POST", f"/userdata/{encoded}/move/stolen.json") for encoded in RAW_QUERY_PAYLOADS]
    await _expect_refusals(scene, requests)
    assert sorted(os.listdir(scene.root)) == ["escape.png", "escape_dir", "legit.json"]


async def test_move_dest_refuses_every_payload(scene):
    requests = [
        ("POST", f"/userdata/legit.json/move/{quote(payload, safe='')}") for payload in scene.payloads
    ]
    requests += [("POST", f"/userdata/legit.json/move/{encoded}") for encoded in RAW_QUERY_PAYLOADS]
    await _expect_refusals(scene, requests)
    assert (scene.root / "legit.json").read_bytes() == b"{}"
    assert sorted(os.listdir(scene.root)) == ["escape.png", "escape_dir", "legit.json"]


async def test_dir_parameter_refuses_every_payload(scene):
    requests = [("GET", "/userdata?dir=" + quote(payload, safe="")) for payload in scene.payloads]
    requests += [("GET", "/userdata?recurse=true&dir=" + encoded) for encoded in RAW_QUERY_PAYLOADS]
    await _expect_refusals(scene, requests)


async def test_v2_path_parameter_refuses_every_payload(scene):
    # An empty path is the documented way to list the user's root, so it is not an attack here.
    payloads = [p for p in scene.payloads if p != ""]
    requests = [("GET", "/v2/userdata?path=" + quote(payload, safe="")) for payload in payloads]
    requests += [("GET", "/v2/userdata?path=" + encoded) for encoded in RAW_QUERY_PAYLOADS]
    await _expect_refusals(scene, requests)


async def test_listings_do_not_follow_symlinks_out_of_the_user_folder(scene):
    status, body = await scene.server.json("GET", "/v2/userdata")
    assert status == 200
    assert [e["path"] for e in body] == ["legit.json"]
    status, body = await scene.server.json("GET", "/userdata", params={"dir": ".", "recurse": "true"})
    assert (status, body) == (200, ["legit.json"])


async def test_settings_file_symlinked_outside_is_refused(scene):
    os.symlink(scene.sentinel, scene.root / "comfy.settings.json")
    status, body, _ = await raw(scene.server, "GET", "/settings")
    assert status == 403 and SENTINEL_BYTES not in body
    status, body, _ = await raw(scene.server, "GET", "/settings/x")
    assert status == 403
    status, _, _ = await raw(
        scene.server, "POST", "/settings/x", data=json.dumps(WRITE_MARK.decode()).encode()
    )
    assert status == 403
    status, _, _ = await raw(scene.server, "POST", "/settings", data=b'{"x": 1}')
    assert status == 403
    scene.assert_untouched()


async def test_user_folder_symlinked_outside_is_refused(comfy_server, tmp_path):
    sentinel = plant_sentinel(tmp_path)
    server = await comfy_server(plugins=["userdata"])
    server.kernel.settings.user_path.mkdir(parents=True)
    os.symlink(sentinel.parent, user_root(server))
    before = snapshot_outside(tmp_path, [])
    for method, path in [
        ("GET", f"/userdata/{sentinel.name}"),
        ("POST", "/userdata/new.txt"),
        ("GET", "/userdata?dir=."),
        ("GET", "/v2/userdata"),
        ("GET", "/settings"),
        ("POST", "/settings/x"),
        ("GET", "/users"),
    ]:
        status, body, _ = await raw(server, method, path, data=b"1")
        assert status == 403, (method, path, status)
        assert SENTINEL_BYTES not in body
    assert snapshot_outside(tmp_path, []) == before
    assert sentinel.read_bytes() == SENTINEL_BYTES
