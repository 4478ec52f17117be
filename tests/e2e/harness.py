"""What every browser test shares: Debian's Chromium, the network fence, the console watch.

Debian's ``chromium`` (installed by ``.ci/run``) is driven by playwright through
``executable_path``; every request that does not go to the loopback server is aborted. Console
errors are collected unless this module names their cause (an expected 404 of an optional file,
a request to the outside world that the fence aborted).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

import tests.e2e.uipack as uipack

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# Settings a user of an offline install would set; applied through POST /settings before boot.
OFFLINE_SETTINGS = {
    # The first-run template browser shows thumbnails from the optional media packages (the
    # `media` extra), which the test install leaves out: their 404s would be console errors.
    "Comfy.TutorialCompleted": True,
    # The release check calls api.comfy.org, which this test blocks.
    "Comfy.Notification.ShowVersionUpdates": False,
}

# Console errors that cannot be avoided, by the URL that caused them, with the reason.
EXPECTED_404S = {
    "/api/userdata?dir=workflows": "fresh user directory: no workflows/ yet; the reference answers 404 "
    "'Directory not found' too and the UI treats it as an empty list",
    "/api/userdata?dir=subgraphs": "fresh user directory: no subgraphs/ yet (same as workflows/)",
    "/api/userdata/user.css": "the optional user stylesheet does not exist (index.html always asks)",
    "/api/userdata/comfy.templates.json": "the optional legacy user templates file does not exist",
    "/api/userdata/workflows%2F.index.json": "the workflows sidebar asks for its optional index file first "
    "and lists the folder when it is absent",
    "/api/view?type=input&filename=Loading...": "a remote combo (LoadImageOutput's output-file list) holds "
    "the frontend's placeholder value 'Loading...' until the list arrives, and the image preview asks "
    "/view for that placeholder as if it were a file",
}

# Outside hosts the UI contacts even offline; the fence aborts those requests, which the browser
# reports as console errors.
EXPECTED_BLOCKED_HOSTS = {
    "huggingface.co": "the default workflow names model files with download URLs; once loader nodes "
    "exist the UI asks for their sizes (HEAD) to offer downloads of the missing models",
}

# Console errors caused by our own bugs that are known and not yet fixed: pattern -> reason.
# Delete an entry as soon as the bug is fixed: the tests then guard against its return.
KNOWN_BUGS: dict[str, str] = {}


def is_expected(message: ConsoleMessage) -> bool:
    """Whether a console error has one of the causes named above."""
    url = message.location.get("url", "")
    parts = urlsplit(url)
    if any(pattern in message.text for pattern in KNOWN_BUGS):
        return True
    if parts.hostname in EXPECTED_BLOCKED_HOSTS:
        return "net::ERR_FAILED" in message.text
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return "404" in message.text and any(path.startswith(prefix) for prefix in EXPECTED_404S)


class Browser:
    """Console errors, page errors, blocked requests and WebSocket message types of one page."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.blocked: list[str] = []
        self.ws_types: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("websocket", self._websocket)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not is_expected(message):
            self.console_errors.append(f"{message.text} ({message.location.get('url')})")

    def _websocket(self, ws: Any) -> None:  # playwright's WebSocket
        def frame(payload: str | bytes) -> None:
            if isinstance(payload, str):
                try:
                    self.ws_types.append(json.loads(payload).get("type", ""))
                except ValueError:
                    pass

        ws.on("framereceived", frame)

    async def block_the_world(self) -> None:
        async def route(route: Any) -> None:  # playwright's Route
            url = route.request.url
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob") or parts.hostname in LOOPBACK:
                await route.continue_()
            else:
                self.blocked.append(url)
                await route.abort()

        await self.page.route("**/*", route)

    async def boot(self) -> None:
        await self.page.goto(self.origin + "/")
        await self.page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
        # Let the boot-time fetches (extensions, i18n, settings, queue) settle.
        await self.page.wait_for_load_state("networkidle", timeout=30_000)


async def start_with_every_plugin(comfy_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The server as ``comfykernel run`` (``--plugins all``) loads it, plus the test pack ``uipack``,
    with the offline settings stored for the UI."""
    monkeypatch.setenv("COMFYKERNEL_EXTRA_PLUGINS", f"uipack={uipack.__name__}")
    server = await comfy_server(plugins=None)
    status, _ = await server.json("POST", "/settings", json=OFFLINE_SETTINGS)
    assert status == 200
    return server


@asynccontextmanager
async def booted_ui(origin: str, chromium_path: str) -> AsyncIterator[Browser]:
    """A fenced Chromium page showing the UI at ``origin``, booted; closed on exit."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            ui = Browser(page, origin)
            await ui.block_the_world()
            await ui.boot()
            yield ui
        finally:
            await browser.close()
