"""Dual-path routing, the security middlewares, body limits and error shapes, over real HTTP."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

from kernel import hookimpl

routes = web.RouteTableDef()


@routes.get("/echo")
async def echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path})


@routes.post("/echo")
async def echo_post(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"size": len(body)})


@routes.get("/api/only_here")
async def only_here(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/boom")
async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


@routes.post("/parse")
async def parse(request: web.Request) -> web.Response:
    return web.json_response(await request.json())


@routes.get("/app.js")
async def script(request: web.Request) -> web.Response:
    return web.Response(text="console.log(1)", content_type="application/javascript")


class RoutesPlugin:
    @hookimpl
    def register_routes(self):
        return routes


PLUGIN = ("test_routes", RoutesPlugin())


async def test_hook_register_routes(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    for path in ("/echo", "/api/echo"):
        status, body = await server.json("GET", path)
        assert status == 200 and body == {"path": path}


async def test_api_only_route_absent_at_bare_path(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    assert (await server.json("GET", "/api/only_here"))[0] == 200
    status, body = await server.json("GET", "/only_here")
    assert status == 404 and "error" in body
    assert (await server.json("GET", "/api/api/only_here"))[0] == 404


async def test_foreign_host_refused_on_loopback(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    for host in ("evil.example.com", "evil.example.com:8188", "127.0.0.1.nip.io"):
        status, body = await server.json("GET", "/echo", headers={"Host": host})
        assert status == 403, host
        assert "not allowed" in body["error"]
    for host in ("localhost:8188", "127.0.0.1", "[::1]:8188", "LOCALHOST"):
        status, _ = await server.json("GET", "/echo", headers={"Host": host})
        assert status == 200, host


async def test_allowed_hosts_setting_extends_allow_list(comfy_server):
    server = await comfy_server(plugins=[PLUGIN], allowed_hosts=["comfy.lan"])
    assert (await server.json("GET", "/echo", headers={"Host": "comfy.lan:8188"}))[0] == 200
    assert (await server.json("GET", "/echo", headers={"Host": "other.lan"}))[0] == 403


async def test_cross_site_writes_refused(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    port = server.server.port
    bad = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "CROSS-SITE"},
        {"Sec-Fetch-Site": "Cross-Site"},
        {"Origin": "http://evil.example.com"},
        {"Origin": f"http://localhost:{port + 1}"},
        {"Origin": "null"},
    ]
    for headers in bad:
        status, body = await server.json("POST", "/echo", data=b"x", headers=headers)
        assert status == 403, headers
        assert "error" in body
    good = [
        {},  # scripts send no Origin
        {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
    ]
    for headers in good:
        status, body = await server.json("POST", "/echo", data=b"xyz", headers=headers)
        assert status == 200 and body == {"size": 3}, headers


async def test_cors_flag_switches_to_cors(comfy_server):
    server = await comfy_server(plugins=[PLUGIN], enable_cors_header="https://app.example")
    async with server.post("/echo", data=b"x", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    async with server.request("OPTIONS", "/echo", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_body_over_limit_is_413_json(comfy_server):
    server = await comfy_server(plugins=[PLUGIN], max_upload_size=0.01)  # ~10 KB
    status, body = await server.json("POST", "/echo", data=b"x" * 20_000)
    assert status == 413
    assert "too large" in body["error"]

    async def chunks():  # no Content-Length: aiohttp's own limit must answer, still as JSON
        for _ in range(10):
            yield b"y" * 4096

    status, body = await server.json("POST", "/echo", data=chunks())
    assert status == 413 and "too large" in body["error"]
    status, body = await server.json("POST", "/echo", data=b"x" * 100)
    assert status == 200 and body == {"size": 100}


async def test_errors_are_json_without_tracebacks(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    async with server.get("/boom") as resp:
        text = await resp.text()
        assert resp.status == 500
        assert resp.content_type == "application/json"
        assert "secret internal detail" not in text and "Traceback" not in text
    status, body = await server.json(
        "POST", "/parse", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "Invalid JSON" in body["error"]
    status, body = await server.json("DELETE", "/echo")
    assert status == 405 and body["error"]


async def test_js_and_css_get_no_cache(comfy_server):
    server = await comfy_server(plugins=[PLUGIN])
    async with server.get("/app.js") as resp:
        assert resp.headers["Cache-Control"] == "no-cache"
    async with server.get("/echo") as resp:
        assert "Cache-Control" not in resp.headers


async def test_websocket_from_foreign_origin_refused(comfy_server):
    server = await comfy_server(plugins=[])
    try:
        await server.session.ws_connect(server.url + "/ws", headers={"Origin": "http://evil.example.com"})
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("cross-origin WebSocket was accepted")


async def test_get_routes_answer_head_and_web_get_defs_work(comfy_server):
    class Plain:
        @hookimpl
        def register_routes(self):
            return [web.get("/plain", echo), web.get("/nohead", echo, allow_head=False)]

    server = await comfy_server(plugins=[("plain", Plain())])
    async with server.request("HEAD", "/plain") as resp:
        assert resp.status == 200
    assert (await server.json("GET", "/api/plain"))[0] == 200
    async with server.request("HEAD", "/nohead") as resp:
        assert resp.status == 405


async def test_api_twin_false_keeps_a_route_off_api(comfy_server):
    files = web.RouteTableDef()

    @files.get("/files/{name}", api_twin=False)
    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info["name"])

    class Files:
        @hookimpl
        def register_routes(self):
            return files

    server = await comfy_server(plugins=[("files_plugin", Files())])
    async with server.get("/files/a.txt") as resp:
        assert resp.status == 200 and await resp.text() == "a.txt"
    async with server.get("/api/files/a.txt") as resp:
        assert resp.status == 404


async def test_malformed_host_or_origin_is_403_not_500(comfy_server):
    # An unbalanced "[" made urlsplit raise inside the host and cross-site checks: a 500.
    server = await comfy_server(plugins=[PLUGIN])
    status, body = await server.json("GET", "/echo", headers={"Host": "[::1"})
    assert status == 403 and "not allowed" in body["error"]
    for origin in ("http://[::1", "http://[evil.example.com"):
        status, body = await server.json("POST", "/echo", data=b"x", headers={"Origin": origin})
        assert status == 403, origin
        assert "Cross-origin" in body["error"]


async def test_json_errors_keep_the_exceptions_headers(comfy_server):
    # error_middleware rebuilt raised 4xx as JSON and dropped their headers: a 405 lost its
    # Allow, and with --enable-cors-header a 404 or an aiohttp 413 lost the CORS headers.
    server = await comfy_server(plugins=[PLUGIN])
    async with server.request("PUT", "/echo") as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
        assert "error" in json.loads(await resp.text())

    cors = await comfy_server(plugins=[PLUGIN], enable_cors_header="https://app.example")
    async with cors.get("/nosuch", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 404
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.content_type == "application/json"


async def test_deeply_nested_json_is_400(comfy_server):
    # json.loads raises RecursionError (not ValueError) on [[[[…]]]]: it used to be a 500.
    server = await comfy_server(plugins=[PLUGIN])
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/parse", "/prompt", "/queue", "/free"):
        status, body = await server.json("POST", path, data=deep)
        assert status == 400, path
        assert "error" in body
    status, body = await server.json("POST", "/prompt", data=deep)
    assert body["error"]["type"] == "invalid_prompt"
