"""The web root: GET / (no-cache index.html), static assets after the API, --front-end-root."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel import StartupError
from plugins.frontend_ext.webroot import package_dir


async def test_index_served_without_caching(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    async with server.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "<html" in (await resp.text()).lower()
        assert resp.headers["Cache-Control"] == "no-store, must-revalidate"
        assert resp.headers["Pragma"] == "no-cache"
        assert resp.headers["Expires"] == "0"


async def test_frontend_assets_served_from_the_package(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    static = package_dir("comfyui_frontend_package", "static")
    asset = next(p for p in (static / "assets").iterdir() if p.suffix == ".js")
    async with server.get(f"/assets/{asset.name}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
        assert resp.headers["Cache-Control"] == "no-cache"
        assert await resp.read() == asset.read_bytes()
    async with server.get("/assets/does-not-exist.js") as resp:
        assert resp.status == 404


async def test_api_routes_win_over_static_files(comfy_server, tmp_path):
    root = tmp_path / "ui"
    root.mkdir()
    (root / "index.html").write_text("<html>custom ui</html>")
    (root / "features").write_text("a static file shadowed by the API route")
    server = await comfy_server(plugins=["frontend_ext"], extra={"front_end_root": str(root)})
    status, body = await server.json("GET", "/features")
    assert status == 200 and isinstance(body, dict)
    async with server.get("/") as resp:
        assert await resp.text() == "<html>custom ui</html>"


async def test_static_root_refuses_traversal(comfy_server, tmp_path):
    root = tmp_path / "ui"
    root.mkdir()
    (root / "index.html").write_text("<html></html>")
    (tmp_path / "secret.txt").write_text("secret")
    server = await comfy_server(plugins=["frontend_ext"], extra={"front_end_root": str(root)})
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
        async with server.get(path) as resp:
            assert resp.status in (403, 404), path
            assert "secret" not in await resp.text()


def test_front_end_root_without_index_is_a_startup_error(make_kernel, tmp_path):
    with pytest.raises(StartupError, match="front-end-root"):
        make_kernel(plugins=["frontend_ext"], extra={"front_end_root": str(tmp_path / "missing")})


async def test_plugin_disabled_root_is_404_and_api_works(comfy_server):
    server = await comfy_server(plugins=[])
    async with server.get("/") as resp:
        assert resp.status == 404
    status, body = await server.json("GET", "/features")
    assert status == 200 and "max_upload_size" in body
    status, _ = await server.json("GET", "/system_stats")
    assert status == 200
    async with server.get("/extensions") as resp:
        assert resp.status == 404


async def test_plugin_blocked_with_every_other_plugin(comfy_server):
    server = await comfy_server(plugins=None, disabled=["frontend_ext"])
    assert not server.kernel.has_plugin("frontend_ext")
    async with server.get("/") as resp:
        assert resp.status == 404
    status, body = await server.json("GET", "/features")
    assert status == 200 and isinstance(body, dict)


def test_front_end_root_option_reaches_settings():
    from kernel.cli import build_parser
    from kernel.plugins import build_plugin_manager
    from kernel.settings import settings_from_namespace

    pm, _ = build_plugin_manager(["frontend_ext"])
    args = build_parser(pm).parse_args(["run", "--front-end-root", "/srv/ui"])
    assert settings_from_namespace(args, set()).extra["front_end_root"] == "/srv/ui"


def test_docs_package_found():
    assert package_dir("comfyui_embedded_docs", "docs") is not None
    assert isinstance(package_dir("no_such_package_here", "docs"), type(None))
    assert Path(str(package_dir("comfyui_frontend_package", "static"))).joinpath("index.html").is_file()


async def test_user_css_is_an_empty_stylesheet(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    async with server.get("/user.css") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/css"
        assert await resp.text() == ""


async def test_user_css_from_a_custom_root(comfy_server, tmp_path):
    root = tmp_path / "ui"
    root.mkdir()
    (root / "index.html").write_text("<html></html>")
    (root / "user.css").write_text("body { color: red; }")
    server = await comfy_server(plugins=["frontend_ext"], extra={"front_end_root": str(root)})
    async with server.get("/user.css") as resp:
        assert await resp.text() == "body { color: red; }"


async def test_system_stats_lists_package_versions_for_the_ui(comfy_server):
    from importlib import metadata

    server = await comfy_server(plugins=["frontend_ext"])
    status, body = await server.json("GET", "/system_stats")
    assert status == 200
    rows = body["system"]["comfy_package_versions"]
    assert isinstance(rows, list)  # the web UI iterates it: a dict breaks its boot
    frontend = next(r for r in rows if r["name"] == "comfyui-frontend-package")
    assert frontend == {
        "name": "comfyui-frontend-package",
        "installed": metadata.version("comfyui-frontend-package"),
        "required": metadata.version("comfyui-frontend-package"),
    }


async def test_static_names_the_os_refuses_are_404_not_500(comfy_server, tmp_path):
    root = tmp_path / "ui"
    root.mkdir()
    (root / "index.html").write_text("<html></html>")
    (root / "loop").symlink_to(root / "loop")
    server = await comfy_server(plugins=["frontend_ext"], extra={"front_end_root": str(root)})
    for path in ("/" + "a" * 300, "/assets/" + "b" * 300 + ".js", "/docs/" + "c" * 300, "/loop/x"):
        async with server.get(path) as resp:
            assert resp.status == 404, path
