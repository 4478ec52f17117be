"""One test per hook (named test_hook_<name>); test_docs.py checks none is missing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from aiohttp import web

from kernel import StartupError, StashKey, hookimpl
from kernel.cli import build_parser
from kernel.events import Event, ServerMessage
from kernel.plugins import build_plugin_manager

SEEN = StashKey[list]()


class Recorder:
    """A throwaway plugin implementing the lifecycle hooks."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def configure(self, kernel):
        self.calls.append("configure")
        kernel.stash[SEEN] = []

    @hookimpl
    def startup(self, kernel, app):
        async def later():
            self.calls.append("startup")
            assert isinstance(app, web.Application)

        return later()

    @hookimpl
    async def shutdown(self, kernel):
        self.calls.append("shutdown")


def test_hook_add_options():
    class Options:
        @hookimpl
        def add_options(self, parser):
            parser.add_argument("--my-flag", type=int, default=3)

    pm, _ = build_plugin_manager([], [], [("opts", Options())])
    parser = build_parser(pm)
    args = parser.parse_args(["run", "--my-flag", "9"])
    from kernel.settings import settings_from_namespace

    settings = settings_from_namespace(args, {"port"})
    assert settings.extra["my_flag"] == 9


def test_hook_register_commands():
    ran: list[argparse.Namespace] = []

    class Commands:
        @hookimpl
        def register_commands(self, subparsers):
            p = subparsers.add_parser("hello")
            p.add_argument("--name")
            p.set_defaults(func=lambda args: ran.append(args) or 0)

    pm, _ = build_plugin_manager([], [], [("cmds", Commands())])
    args = build_parser(pm).parse_args(["hello", "--name", "x"])
    assert args.func(args) == 0 and ran[0].name == "x"


def test_hook_configure(make_kernel):
    rec = Recorder()
    kernel = make_kernel(plugins=[("rec", rec)])
    assert rec.calls == ["configure"]
    assert kernel.stash[SEEN] == []

    class Refuses:
        @hookimpl
        def configure(self, kernel):
            raise StartupError("no GPU found")

    with pytest.raises(StartupError, match="no GPU"):
        make_kernel(plugins=[("refuses", Refuses())])


async def test_hook_startup(comfy_server):
    rec = Recorder()
    await comfy_server(plugins=[("rec", rec)])
    assert rec.calls == ["configure", "startup"]


async def test_hook_shutdown(comfy_server):
    rec = Recorder()

    class Fails:
        @hookimpl
        def shutdown(self):
            raise RuntimeError("broken shutdown")

    server = await comfy_server(plugins=[("rec", rec), ("fails", Fails())])
    await server.stop()
    # The failing plugin did not stop the others.
    assert rec.calls == ["configure", "startup", "shutdown"]


class Node:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (1,)


def test_hook_register_nodes(make_kernel):
    class Pack:
        @hookimpl
        def register_nodes(self, register):
            register("MyNode", Node, display_name="My Node")

    kernel = make_kernel(plugins=[("pack", Pack())])
    entry = kernel.nodes.get("MyNode")
    assert entry.cls is Node and entry.plugin == "pack" and entry.display_name == "My Node"

    class Bad:
        @hookimpl
        def register_nodes(self, register):
            register("NotAClass", object())

    with pytest.raises(StartupError, match="not a class"):
        make_kernel(plugins=[("bad", Bad())])


def test_hook_register_model_folders(make_kernel):
    class Folders:
        @hookimpl
        def register_model_folders(self, register):
            register("ipadapter", ["safetensors", ".BIN"], aliases=["ip_adapter"])

    kernel = make_kernel(plugins=[("folders", Folders())])
    kind = kernel.model_folders.get("ip_adapter")
    assert kind.name == "ipadapter" and kind.extensions == {".safetensors", ".bin"}
    assert kind.plugin == "folders"

    class Again:
        @hookimpl
        def register_model_folders(self, register):
            register("ipadapter", [])

    with pytest.raises(StartupError, match="folders.*again|again.*folders"):
        make_kernel(plugins=[("folders", Folders()), ("again", Again())])


async def test_hook_register_static_routes(comfy_server, tmp_path: Path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "hello.txt").write_text("hi there")
    (tmp_path / "secret.txt").write_text("secret")

    class Static:
        @hookimpl
        def register_static_routes(self):
            return [("/assets", str(static))]

    server = await comfy_server(plugins=[("static", Static())])
    async with server.get("/assets/hello.txt") as resp:
        assert resp.status == 200 and await resp.text() == "hi there"
    async with server.get("/assets/..%2Fsecret.txt") as resp:
        assert resp.status in (403, 404) and "secret" not in await resp.text()
    async with server.get("/api/assets/hello.txt") as resp:
        assert resp.status == 404
    # A name the OS refuses (too long for the filesystem) is a 404, not a 500.
    async with server.get("/assets/" + "x" * 300) as resp:
        assert resp.status == 404 and "error" in await resp.json()


async def test_hook_register_middlewares(comfy_server):
    @web.middleware
    async def stamp(request, handler):
        response = await handler(request)
        response.headers["X-Stamped"] = "yes"
        return response

    class Mw:
        @hookimpl
        def register_middlewares(self):
            return [stamp]

    server = await comfy_server(plugins=[("mw", Mw())])
    async with server.get("/system_stats") as resp:
        assert resp.headers["X-Stamped"] == "yes"
    # Kernel middlewares run first: a refused Host never reaches the plugin's middleware.
    async with server.get("/system_stats", headers={"Host": "evil.example"}) as resp:
        assert resp.status == 403 and "X-Stamped" not in resp.headers


def test_hook_register_web_extensions(make_kernel, tmp_path: Path):
    class Web:
        @hookimpl
        def register_web_extensions(self, register):
            register("my_pack", tmp_path)

    kernel = make_kernel(plugins=[("web", Web())])
    ext = kernel.web_extensions.entries["my_pack"]
    assert ext.directory == tmp_path and ext.plugin == "web"


def test_hook_register_translations(make_kernel):
    class A:
        @hookimpl
        def register_translations(self, register):
            register("en", {"nodeDefs": {"A": {"display_name": "A"}}})

    class B:
        @hookimpl
        def register_translations(self, register):
            register("en", {"nodeDefs": {"B": {"display_name": "B"}}})
            register("fr", {"x": "y"})

    kernel = make_kernel(plugins=[("a", A()), ("b", B())])
    assert kernel.translations.languages["en"]["nodeDefs"] == {
        "A": {"display_name": "A"},
        "B": {"display_name": "B"},
    }
    assert kernel.translations.languages["fr"] == {"x": "y"}


async def test_hook_register_feature_flags(comfy_server):
    class Flags:
        @hookimpl
        def register_feature_flags(self):
            return {"my_feature": True, "supports_preview_metadata": False}

    server = await comfy_server(plugins=[("flags", Flags())], feature_flags={"cli_flag": "x"})
    status, flags = await server.json("GET", "/features")
    assert status == 200
    assert flags["my_feature"] is True
    assert flags["supports_preview_metadata"] is False  # a plugin may override core's flags
    assert flags["cli_flag"] == "x"
    assert flags["max_upload_size"] == 100 * 1024 * 1024


def test_hook_on_prompt(make_kernel):
    class Rewrites:
        @hookimpl
        def on_prompt(self, body):
            body["seen"] = True

    class Replaces:
        @hookimpl
        def on_prompt(self, body):
            return {**body, "replaced": True}

    class Raises:
        @hookimpl
        def on_prompt(self, body):
            raise ValueError("bad plugin")

    kernel = make_kernel(plugins=[("r1", Rewrites()), ("r2", Raises()), ("r3", Replaces())])
    out = kernel.hooks.on_prompt(kernel, {"prompt": {}})
    assert out == {"prompt": {}, "seen": True, "replaced": True}


async def test_hook_on_event(comfy_server):
    got: list[Event] = []

    class Listener:
        @hookimpl
        def on_event(self, event):
            got.append(event)

    server = await comfy_server(plugins=[("listener", Listener())])
    msg = ServerMessage(type="x", data={})
    server.kernel.bus.publish(msg)
    assert msg in got
    # From another thread: delivered on the loop, in order.
    import threading

    events = [ServerMessage(type=str(i), data={}) for i in range(20)]
    t = threading.Thread(target=lambda: [server.kernel.bus.publish_threadsafe(e) for e in events])
    t.start()
    t.join()
    import asyncio

    for _ in range(50):
        if all(e in got for e in events):
            break
        await asyncio.sleep(0.01)
    assert [e for e in got if e in events] == events


def test_hook_wrap_node_execution(make_kernel):
    order: list[str] = []

    class Timer:
        @hookimpl(wrapper=True)
        def wrap_node_execution(self, node_id, class_type):
            order.append(f"before {node_id} {class_type}")
            result = yield
            order.append("after")
            return (result[0] * 10,)

    kernel = make_kernel(plugins=[("timer", Timer())])
    result = kernel.hooks.wrap_node_execution(kernel, "5", "MyNode", lambda: order.append("call") or (4,))
    assert result == (40,)
    assert order == ["before 5 MyNode", "call", "after"]


async def test_hook_system_stats(comfy_server):
    class Stats:
        @hookimpl
        def system_stats(self):
            return {
                "system": {"deploy_environment": "test-env"},
                "devices": [{"name": "fake", "type": "cuda"}],
            }

    server = await comfy_server(plugins=[("stats", Stats())])
    status, stats = await server.json("GET", "/api/system_stats")
    assert status == 200
    assert stats["system"]["deploy_environment"] == "test-env"
    assert stats["system"]["os"]  # core's fields are still there
    assert stats["devices"] == [{"name": "fake", "type": "cuda"}]
