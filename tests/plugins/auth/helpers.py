"""Accounts made through the real CLI, servers with --auth, and a node that writes an output file."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import aiohttp

from kernel import hookimpl
from kernel.cli import main
from tests.kernel.exec_helpers import EXEC_PACK

PASSWORD = "correct horse battery"
PLUGINS = ["userdata", "history", "auth"]


def cli(base: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``comfykernel users ...`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = main(["users", "--base-directory", str(base), *args])
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def add_user(base: Path, name: str, *, admin: bool = False, password: str = PASSWORD) -> None:
    flags = ["--admin"] if admin else []
    code, _, err = cli(base, "add", name, "--password-stdin", *flags, stdin=password + "\n")
    assert code == 0, err


def new_token(base: Path, name: str) -> str:
    code, out, err = cli(base, "token", name)
    assert code == 0, err
    return out.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SaveText:
    """Output node writing a small file to the output directory, reported like SaveImage."""

    CATEGORY = "test/auth"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"default": "hi"}), "name": ("STRING", {"default": "out"})}}

    def run(self, text: str, name: str) -> dict[str, Any]:
        path = self.output_dir / f"{name}.txt"
        path.write_text(text)
        return {"ui": {"images": [{"filename": path.name, "subfolder": "", "type": "output"}]}}

    output_dir: Path = Path(".")


class SavePack:
    def __init__(self) -> None:
        self.kernel: Any = None

    @hookimpl
    def configure(self, kernel: Any) -> None:
        SaveText.output_dir = kernel.settings.output_path

    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register("AuthSaveText", SaveText)


async def start(comfy_server: Any, base: Path, mode: str = "password", **extra: Any) -> Any:
    return await comfy_server(
        plugins=[*PLUGINS, EXEC_PACK, ("savepack", SavePack())],
        base_directory=base,
        extra={"auth": mode, **extra},
    )


async def login(server: Any, name: str, password: str = PASSWORD) -> aiohttp.ClientSession:
    """A new client session holding the cookie of a JSON login."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(
        server.url + "/auth/login", json={"username": name, "password": password}
    ) as resp:
        assert resp.status == 200, await resp.text()
    return session


def save_prompt(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "AuthSaveText", "inputs": {"text": name, "name": name}}}


SLOW = {
    "1": {"class_type": "ExecSteps", "inputs": {"steps": 400, "delay": 0.05, "value": 1}},
    "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
}


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
