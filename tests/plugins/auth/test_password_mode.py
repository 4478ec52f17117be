"""--auth password through the real server: credentials, sessions, tokens, limits, the login page."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
import yarl

from tests.conformance.spec import operations, served_paths
from tests.plugins.auth.helpers import PASSWORD, add_user, bearer, cli, login, new_token, start


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "x", path)


# Each mode without acceptable credentials: password mode with none; proxy mode with the header
# from an untrusted peer, and from the trusted peer without the header.
NO_CREDENTIALS = {
    "password": ({"auth": "password"}, {}),
    "proxy-untrusted-peer": ({"auth": "proxy", "trusted_proxy": ["10.0.0.0/8"]}, {"X-Forwarded-User": "eve"}),
    "proxy-no-header": ({"auth": "proxy", "trusted_proxy": ["127.0.0.1"]}, {}),
}


@pytest.mark.parametrize("case", sorted(NO_CREDENTIALS))
async def test_every_spec_operation_and_the_websocket_need_credentials(comfy_server, tmp_path, case):
    extra, sent = NO_CREDENTIALS[case]
    server = await comfy_server(
        plugins=["userdata", "history", "frontend_ext", "models", "assets", "auth"],
        base_directory=tmp_path,
        extra=extra,
    )
    server.session.headers.update(sent)
    checked = 0
    for op in operations():
        for path in served_paths(op.path):
            async with server.request(
                op.method, _concrete(path), headers={"Accept": "application/json"}
            ) as resp:
                body = await resp.json(content_type=None) if op.method != "HEAD" else {"error": ""}
                assert resp.status == 401, (op.method, path, resp.status)
                assert isinstance(body, dict) and isinstance(body.get("error"), str), (op.method, path)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                checked += 1
    assert checked > 100
    # Static files and unknown paths too: nothing leaks past the gate.
    for path in ("/", "/index.html", "/extensions", "/no/such/path"):
        assert (await server.json("GET", path))[0] == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await server.ws("c1")
    assert refused.value.status == 401
    if extra["auth"] == "proxy":
        return
    # A wrong or malformed token is no better.
    for header in ("Bearer nope", "Bearer ckt_abc_def", "Bearer "):
        assert (await server.json("GET", "/queue", headers={"Authorization": header}))[0] == 401


async def test_token_and_cookie_both_work_for_http_and_websocket(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    token = new_token(tmp_path, "alice")
    server = await start(comfy_server, tmp_path)
    status, me = await server.json("GET", "/auth/me", headers=bearer(token))
    assert status == 200 and me["name"] == "alice" and me["admin"] is False
    assert me["user"].startswith("alice_")
    assert (await server.json("GET", "/api/queue", headers=bearer(token)))[0] == 200
    ws = await server.session.ws_connect(server.url + "/ws?clientId=t1", headers=bearer(token))
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()
    ws = await server.session.ws_connect(server.url + f"/ws?clientId=t2&token={token}")
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()

    session = await login(server, "alice")
    try:
        async with session.get(server.url + "/auth/me") as resp:
            assert resp.status == 200 and (await resp.json())["user"] == me["user"]
        ws = await session.ws_connect(server.url + "/ws?clientId=c3")
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        await ws.close()
        # Logout ends the session server-side: the old cookie value is worthless afterwards.
        cookie = session.cookie_jar.filter_cookies(yarl.URL(server.url))["comfykernel_session"].value
        async with session.post(server.url + "/auth/logout") as resp:
            assert resp.status == 200
        async with session.get(server.url + "/auth/me") as resp:
            assert resp.status == 401
    finally:
        await session.close()
    status, _ = await server.json("GET", "/auth/me", headers={"Cookie": f"comfykernel_session={cookie}"})
    assert status == 401


async def test_login_cookie_attributes_and_rotation(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await start(comfy_server, tmp_path, auth_session_hours=2)
    async with server.post("/auth/login", json={"username": "alice", "password": PASSWORD}) as resp:
        assert resp.status == 200
        first = resp.cookies["comfykernel_session"]
        raw = resp.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Secure" not in raw
    assert first["max-age"] == str(2 * 3600) and first["path"] == "/"
    # Logging in again with the old cookie issues a new value and ends the old one.
    headers = {"Cookie": f"comfykernel_session={first.value}"}
    async with server.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers=headers
    ) as resp:
        second = resp.cookies["comfykernel_session"].value
    assert second != first.value
    assert (await server.json("GET", "/auth/me", headers=headers))[0] == 401
    assert (await server.json("GET", "/auth/me", headers={"Cookie": f"comfykernel_session={second}"}))[
        0
    ] == 200


async def test_secure_cookie_behind_a_tls_proxy(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await start(comfy_server, tmp_path, tls_proxy=True)
    async with server.post("/auth/login", json={"username": "alice", "password": PASSWORD}) as resp:
        assert "Secure" in resp.headers["Set-Cookie"]


async def test_revoked_token_and_changed_password_stop_working_at_once(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    token = new_token(tmp_path, "alice")
    other = new_token(tmp_path, "alice")
    server = await start(comfy_server, tmp_path)
    assert (await server.json("GET", "/queue", headers=bearer(token)))[0] == 200
    token_id = token.split("_")[1]
    code, _, err = cli(tmp_path, "revoke", "alice", token_id)
    assert code == 0, err
    assert (await server.json("GET", "/queue", headers=bearer(token)))[0] == 401
    assert (await server.json("GET", "/queue", headers=bearer(other)))[0] == 200

    session = await login(server, "alice")
    try:
        code, _, err = cli(tmp_path, "passwd", "alice", "--password-stdin", stdin="a new password\n")
        assert code == 0, err
        async with session.get(server.url + "/auth/me") as resp:
            assert resp.status == 401
    finally:
        await session.close()
    status, _ = await server.json("POST", "/auth/login", json={"username": "alice", "password": PASSWORD})
    assert status == 401
    await (await login(server, "alice", "a new password")).close()
    # A removed account loses its tokens too.
    assert cli(tmp_path, "remove", "alice")[0] == 0
    assert (await server.json("GET", "/queue", headers=bearer(other)))[0] == 401


async def test_failed_logins_are_rate_limited(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    add_user(tmp_path, "bob")
    server = await start(comfy_server, tmp_path, auth_max_failures=3, auth_failure_window=60)
    for _ in range(3):
        status, body = await server.json(
            "POST", "/auth/login", json={"username": "alice", "password": "wrong!!!"}
        )
        assert status == 401 and body == {"error": "Wrong user name or password"}
    async with server.post("/auth/login", json={"username": "alice", "password": PASSWORD}) as resp:
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # The client address is over the limit too: another name does not help.
    async with server.post("/auth/login", json={"username": "bob", "password": PASSWORD}) as resp:
        assert resp.status == 429
    # Unknown names count like wrong passwords (and answer the same).
    fresh = await start(comfy_server, tmp_path / "other", auth_max_failures=2)
    for _ in range(2):
        status, body = await fresh.json(
            "POST", "/auth/login", json={"username": "ghost", "password": "x" * 8}
        )
        assert status == 401 and body == {"error": "Wrong user name or password"}
    assert (await fresh.json("POST", "/auth/login", json={"username": "ghost", "password": "x" * 8}))[
        0
    ] == 429


async def test_wrong_tokens_are_rate_limited(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    token = new_token(tmp_path, "alice")
    server = await start(comfy_server, tmp_path, auth_max_failures=2)
    forged = token[:-4] + "AAAA"
    for _ in range(2):
        assert (await server.json("GET", "/queue", headers=bearer(forged)))[0] == 401
    assert (await server.json("GET", "/queue", headers=bearer(forged)))[0] == 429


async def test_login_page_for_browsers(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await start(comfy_server, tmp_path)
    page = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}
    async with server.get("/?x=1", headers=page, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/auth/login?next=/?x=1"
    async with server.get("/auth/login?next=/?x=1", headers=page) as resp:
        html = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
    assert '<form method=post action="/auth/login">' in html and 'value="/?x=1"' in html
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")
    form = {"username": "alice", "password": "nope nope", "next": "/?x=1"}
    async with server.post("/auth/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 401 and "Wrong user name or password" in await resp.text()
    form["password"] = PASSWORD
    async with server.post("/auth/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/?x=1"
        assert "comfykernel_session" in resp.cookies
    # An open redirect is not on offer.
    form["next"] = "//evil.example/"
    async with server.post("/auth/login", data=form, allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/"
    # A forged cross-site login form is stopped by the kernel's cross-site guard.
    cross = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    async with server.post("/auth/login", data=form, headers=cross, allow_redirects=False) as resp:
        assert resp.status == 403 and "comfykernel_session" not in resp.cookies


async def test_the_frontend_sees_a_single_user_server(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    add_user(tmp_path, "bob")
    token = new_token(tmp_path, "alice")
    server = await start(comfy_server, tmp_path)
    # No user picker, and nobody learns the other accounts.
    assert await server.json("GET", "/users", headers=bearer(token)) == (
        200,
        {"storage": "server", "migrated": True},
    )
    status, _ = await server.json("POST", "/users", json={"username": "mallory"}, headers=bearer(token))
    assert status == 403


async def test_without_the_flag_nothing_changes(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await comfy_server(plugins=["userdata", "history", "auth"], base_directory=tmp_path)
    assert (await server.json("GET", "/queue"))[0] == 200
    assert (await server.json("GET", "/auth/login"))[0] == 404
    assert server.kernel.settings.multi_user is False
    ws = await server.ws("plain")
    assert (await ws.receive_json(timeout=5))["type"] == "status"
    await ws.close()


async def test_bad_login_requests_are_4xx(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await start(comfy_server, tmp_path)
    bodies = [
        {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
        {"data": b"{nope", "headers": {"Content-Type": "application/json"}},
        {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
        {"json": {"username": 5, "password": ["x"]}},
        {"json": {"username": "alice", "password": "x" * 5000}},
        {
            "data": b"username=%ff%fe&password=%00",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
        {"data": b"garbage", "headers": {"Content-Type": "text/plain"}},
        {"data": b""},
    ]
    for kwargs in bodies:
        async with server.post("/auth/login", allow_redirects=False, **kwargs) as resp:
            assert 400 <= resp.status < 500, (kwargs, resp.status, await resp.text())
    weird = ["Bearer \u00e9\u00e9", "Bearer ckt_" + "a" * 5000, "bearer ckt__", "Basic YTpi"]
    for header in weird:
        status, _ = await server.json(
            "GET", "/queue", headers={"Authorization": header.encode().decode("latin-1")}
        )
        assert status == 401, header
    status, _ = await server.json("GET", "/queue", headers={"Cookie": "comfykernel_session=" + "x" * 3000})
    assert status == 401


async def test_only_the_login_routes_themselves_are_open(comfy_server, tmp_path):
    import yarl

    server = await start(comfy_server, tmp_path)
    assert (await server.json("GET", "/api/auth/login"))[0] == 200
    for raw in (
        "/auth/login/../queue",
        "/auth%2Flogin",
        "/auth/login%2F..%2Fqueue",
        "/auth/logout/../history",
    ):
        async with server.session.get(yarl.URL(server.url + raw, encoded=True)) as resp:
            assert resp.status == 401, raw


async def test_sessions_expire(comfy_server, tmp_path):
    add_user(tmp_path, "alice")
    server = await start(comfy_server, tmp_path, auth_session_hours=0.5 / 3600)  # half a second
    session = await login(server, "alice")
    try:
        async with session.get(server.url + "/auth/me") as resp:
            assert resp.status == 200
        await asyncio.sleep(0.7)
        async with session.get(server.url + "/auth/me") as resp:
            assert resp.status == 401
    finally:
        await session.close()
