"""--auth proxy: the user comes from a header, believed only from --trusted-proxy peers."""

from __future__ import annotations

import json

import aiohttp
import pytest

from kernel import StartupError
from tests.plugins.auth.helpers import add_user, cli, start

AS_CAROL = {"X-Forwarded-User": "carol"}


async def test_a_trusted_proxy_names_the_user_who_is_created_on_first_sight(comfy_server, tmp_path):
    server = await start(comfy_server, tmp_path, "proxy", trusted_proxy=["127.0.0.1/32"])
    status, me = await server.json("GET", "/auth/me", headers=AS_CAROL)
    assert status == 200 and me["name"] == "carol" and me["mode"] == "proxy"
    users = json.loads((tmp_path / "user" / "users.json").read_text())
    assert users == {me["user"]: "carol"}
    # Her files are hers: the userdata plugin knows the new id at once.
    async with server.post("/userdata/notes.txt", data=b"hi", headers=AS_CAROL) as resp:
        assert resp.status == 200
    assert (tmp_path / "user" / me["user"] / "notes.txt").read_bytes() == b"hi"
    ws = await server.session.ws_connect(server.url + "/ws", headers=AS_CAROL)
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()
    # No header: nobody; the password routes are not offered.
    assert (await server.json("GET", "/queue"))[0] == 401
    assert (await server.json("POST", "/auth/login", json={"username": "carol", "password": "x" * 8}))[
        0
    ] == 404


async def test_the_header_from_an_untrusted_address_is_401(comfy_server, tmp_path):
    server = await start(comfy_server, tmp_path, "proxy", trusted_proxy=["10.0.0.0/8"])
    assert (await server.json("GET", "/queue", headers=AS_CAROL))[0] == 401
    assert (await server.json("GET", "/auth/me", headers=AS_CAROL))[0] == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.session.ws_connect(server.url + "/ws", headers=AS_CAROL)
    assert refused.value.status == 401
    assert not (tmp_path / "user" / "users.json").exists()


async def test_no_autocreate_and_admins_from_the_accounts_file(comfy_server, tmp_path):
    code, _, err = cli(tmp_path, "add", "root", "--admin", "--no-password")
    assert code == 0, err
    server = await start(
        comfy_server,
        tmp_path,
        "proxy",
        trusted_proxy=["127.0.0.0/8", "::1"],
        auth_no_autocreate=True,
        auth_header="Remote-User",
    )
    assert (await server.json("GET", "/auth/me", headers={"Remote-User": "carol"}))[0] == 401
    assert (await server.json("GET", "/auth/me", headers=AS_CAROL))[0] == 401  # not the configured header
    status, me = await server.json("GET", "/auth/me", headers={"Remote-User": "root"})
    assert status == 200 and me["admin"] is True


async def test_proxy_mode_needs_trusted_proxies(comfy_server, tmp_path):
    with pytest.raises(StartupError, match="--trusted-proxy"):
        await start(comfy_server, tmp_path, "proxy")
    with pytest.raises(StartupError, match="not an address"):
        await start(comfy_server, tmp_path, "proxy", trusted_proxy=["nonsense"])


async def test_a_password_account_behind_a_proxy_keeps_its_id(comfy_server, tmp_path):
    add_user(tmp_path, "dave")
    server = await start(comfy_server, tmp_path, "proxy", trusted_proxy=["127.0.0.1"])
    _, me = await server.json("GET", "/auth/me", headers={"X-Forwarded-User": "dave"})
    users = json.loads((tmp_path / "user" / "users.json").read_text())
    assert users == {me["user"]: "dave"}
