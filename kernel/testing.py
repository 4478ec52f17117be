"""pytest fixtures for comfykernel and for node-pack authors (``pytest11`` entry point).

    async def test_my_node(comfy_server):
        server = await comfy_server(plugins=["core_nodes", ("my_pack", my_pack.plugin)])
        resp = await server.get("/object_info/MyNode")
        assert resp.status == 200

``make_kernel`` builds a Kernel with an exact plugin list under a temporary base directory;
``comfy_server`` also starts the real aiohttp server on a free loopback port and hands back
an HTTP + WebSocket client bound to it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from kernel.app import Kernel
from kernel.server import RunningServer, start_server
from kernel.settings import Settings

try:  # strict-mode projects need the pytest-asyncio decorator; auto mode accepts either
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - pytest-asyncio is part of the test extra
    _async_fixture = pytest.fixture

PluginSpec = str | tuple[str, object] | object


def _split_plugins(plugins: Sequence[PluginSpec] | None) -> tuple[list[str] | None, list[tuple[str, object]]]:
    if plugins is None:
        return None, []
    names: list[str] = []
    inline: list[tuple[str, object]] = []
    for item in plugins:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, tuple):
            inline.append((str(item[0]), item[1]))
        else:
            inline.append((getattr(item, "__name__", type(item).__name__), item))
    return names, inline


def build_kernel(
    base_directory: Path,
    plugins: Sequence[PluginSpec] | None = (),
    disabled: Sequence[str] = (),
    **settings: Any,
) -> Kernel:
    """A Kernel with exactly ``plugins`` (names and/or inline plugin objects) plus the essentials.

    ``plugins=None`` enables every installed plugin. Other keyword arguments are Settings fields.
    """
    names, inline = _split_plugins(plugins)
    data = {"base_directory": str(base_directory), "plugins": names, "disabled": list(disabled), **settings}
    return Kernel(msgspec.convert(data, Settings), inline_plugins=inline)


class ServerClient:
    """A started server plus an aiohttp session pointed at it."""

    def __init__(self, server: RunningServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.kernel = server.kernel
        self.url = server.url

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    async def ws(self, client_id: str | None = None, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        path = "/ws" + (f"?clientId={client_id}" if client_id else "")
        return await self.session.ws_connect(self.url + path, **kwargs)

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Send a request; return (status, parsed JSON body or None when the body is not JSON)."""
        async with self.request(method, path, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, None

    async def stop(self) -> None:
        await self.session.close()
        await self.server.stop()


@pytest.fixture
def make_kernel(tmp_path: Path) -> Callable[..., Kernel]:
    """Factory: ``make_kernel(plugins=[...], **settings)`` → Kernel rooted in a temp dir."""

    def factory(plugins: Sequence[PluginSpec] | None = (), **settings: Any) -> Kernel:
        settings.setdefault("base_directory", tmp_path)
        base = Path(settings.pop("base_directory"))
        return build_kernel(base, plugins, **settings)

    return factory


@_async_fixture
async def comfy_server(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await comfy_server(plugins=[...], **settings)`` → a started ServerClient.

    Every server started is stopped (shutdown hooks included) when the test ends.
    """
    started: list[ServerClient] = []

    async def factory(plugins: Sequence[PluginSpec] | None = (), **settings: Any) -> ServerClient:
        settings.setdefault("base_directory", tmp_path)
        settings.setdefault("listen", ["127.0.0.1"])
        base = Path(settings.pop("base_directory"))
        kernel = build_kernel(base, plugins, **settings)
        server = await start_server(kernel, port=0)
        client = ServerClient(server, aiohttp.ClientSession())
        started.append(client)
        return client

    yield factory
    for client in reversed(started):
        await client.stop()


@pytest.fixture
def comfy_base_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty base directory (models/, input/, output/ ... are created by the plugins)."""
    yield tmp_path
