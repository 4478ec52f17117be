"""How real ComfyUI custom-node packs fare against comfykernel: the pack yardstick.

    python bench/packs.py DIR [--markdown] [--only NAME ...] [--json FILE]

Starts the real server with every pack in DIR (each folder or ``.py`` file, as ComfyUI's
``custom_nodes``), then prints per pack: whether it imported (or the first line of its import
error, from the server log), how many node classes it registered (``GET /object_info``, whose
``python_module`` is ``custom_nodes.<pack>``), how many of its JavaScript files ``GET /extensions``
lists and serve with 200, and the result of its smoke workflow from ``bench/pack_smoke.json``
(an API-format prompt of the pack's pure-Python nodes plus core nodes, run over HTTP and the
WebSocket). Ends with ``N/M packs imported, K/L smoke workflows ran``.

Each pack's smoke result is ``ok``, ``failed: <why>`` (the server's rejection, or the node id,
class, exception type and message of its ``execution_error``), ``no offline workflow: <why>``
(the file says why none can exist: every node of the pack needs a model only a download gives),
``not run (pack did not import)`` or ``no workflow``. Before the server starts the bench writes
tiny random-weight models (``bench/pack_models.py``: an SD1 checkpoint, an ESRGAN upscaler, a
LoRA, a ControlNet, GGUF (Q8_0) and IC-Light UNets, a WD14 tagger, SAM 2 and DepthAnythingV2 files) into
its temporary base directory, so workflows can sample and packs' models can run.

Packs that install packages at import (``pip install`` from their own code) are stopped from
doing so (no package index, ``WAS_BLOCK_AUTO_INSTALL``) and hubs are offline: the bench measures
the environment as it is and never changes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SMOKE_FILE = Path(__file__).resolve().with_name("pack_smoke.json")
IMPORT_ERROR = re.compile(r"Cannot import (?P<path>.+?) module for custom nodes: (?P<error>.*)")
SHIMS = ROOT / "plugins" / "comfy_compat" / "shims"
NO_MODULE = re.compile(r"ModuleNotFoundError: No module named '(?P<module>[^']+)'")
NO_ATTRIBUTE = re.compile(r"AttributeError: module '(?P<module>[^']+)' has no attribute '(?P<name>[^']+)'")
NO_NAME = re.compile(r"ImportError: cannot import name '(?P<name>[^']+)' from '(?P<module>[^']+)'")


@dataclass
class PackResult:
    """What the bench found out about one pack."""

    name: str
    commit: str = ""
    imported: bool = False
    error: str = ""
    classes: int = 0
    js_listed: int = 0
    js_served: int = 0
    smoke: str = "no workflow"
    smoke_ok: bool = False
    blocker: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pack_entries(directory: Path, only: set[str]) -> list[Path]:
    """The entries ComfyUI would try to load from a custom_nodes folder."""
    entries = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name.lower()):
        if path.name.startswith((".", "__")) or path.name.endswith(".disabled"):
            continue
        if not (path.is_dir() or path.suffix == ".py"):
            continue
        if only and path.name not in only:
            continue
        entries.append(path)
    return entries


def short_commit(path: Path) -> str:
    if not path.is_dir():
        return ""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    # Only a pack that is its own checkout has a commit (not a folder inside some other repository).
    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != path.resolve():
        return ""
    return git("rev-parse", "--short=12", "HEAD")


def server_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("COMFYKERNEL_PLUGINS", None)
    # The bench observes; a pack's own runtime installer must not change the environment.
    env.update(
        PIP_NO_INDEX="1",
        WAS_BLOCK_AUTO_INSTALL="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def shimmed(module: str) -> bool:
    """Whether a module name is one comfykernel answers for (a ComfyUI module name).

    Top-level names are the shims; a bare ``model_management`` also counts, because the reference
    puts its ``comfy/`` folder on ``sys.path`` and packs import its modules by their short names.
    """
    top = module.split(".", 1)[0]
    return any(
        (folder / top).is_dir() or (folder / f"{top}.py").is_file() for folder in (SHIMS, SHIMS / "comfy")
    )


def blocker_of(error: str) -> str:
    """Who must act on an import error: comfykernel (a ComfyUI module or symbol we lack) or the
    environment (a third-party module the pack needs); empty when the error says neither."""
    missing = NO_MODULE.search(error)
    if missing:
        module = missing.group("module")
        return f"comfykernel: {module}" if shimmed(module) else f"environment: {module}"
    missing = NO_NAME.search(error) or NO_ATTRIBUTE.search(error)
    if missing:
        where = f"{missing.group('module')}.{missing.group('name')}"
        return f"comfykernel: {where}" if shimmed(missing.group("module")) else f"environment: {where}"
    return ""


def import_errors(log: str) -> dict[str, str]:
    """Pack name -> first line of its import error, from the server log."""
    errors = {}
    for match in IMPORT_ERROR.finditer(log):
        # "cannot import name 'X' from 'm' (/abs/path/m.py)": the path is noise in a table.
        error = re.sub(r" \(/[^()]*\)$", "", first_line(match.group("error")))
        errors[Path(match.group("path").strip()).name] = error
    return errors


class Bench:
    """One server with all the packs, and the HTTP/WebSocket client that measures them."""

    def __init__(
        self, base: Path, custom_nodes: Path, startup_timeout: float, extra_paths: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.startup_timeout = startup_timeout
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [
            sys.executable,
            "-m",
            "comfykernel",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base / "home"),
            "--custom-nodes-dir",
            str(custom_nodes),
            "--cpu",
        ]
        if extra_paths is not None:
            args += ["--extra-model-paths-config", str(extra_paths)]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=server_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                async with self.session.get(self.url + "/system_stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"server not ready after {self.startup_timeout:.0f} s; log: {self.log_path}")

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.url + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def served(self, path: str) -> bool:
        try:
            async with self.session.get(self.url + path) as resp:
                await resp.read()
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def run_workflow(self, prompt: dict[str, Any], timeout: float) -> tuple[bool, str]:
        """Submit; wait on the WebSocket for the prompt's outcome. (ok, what happened)."""
        client_id = uuid.uuid4().hex
        async with self.session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
            async with self.session.post(
                self.url + "/prompt", json={"prompt": prompt, "client_id": client_id}
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    return False, "failed: rejected: " + describe_rejection(body)
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    await self.interrupt()
                    return False, f"failed: timeout after {timeout:.0f} s"
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return False, "failed: websocket closed"
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                payload = data.get("data") or {}
                if payload.get("prompt_id") != prompt_id:
                    continue
                if data["type"] == "execution_success":
                    return True, "ok"
                if data["type"] == "execution_error":
                    return False, describe_execution_error(payload)
                if data["type"] == "execution_interrupted":
                    return False, "failed: interrupted"

    async def interrupt(self) -> None:
        try:
            async with self.session.post(self.url + "/interrupt") as resp:
                await resp.read()
        except aiohttp.ClientError:
            pass

    async def stop(self) -> None:
        await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


TRACE_FRAME = re.compile(r'File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def describe_execution_error(payload: dict[str, Any]) -> str:
    """``failed: node <id> (<class>): <exception type>: <first line of the message> [at <where>]``.

    ``where`` is the innermost frame of the traceback the server sent: whether the fault is in the
    pack or in comfykernel's compatibility layer is the first thing a reader wants to know."""
    message = first_line(str(payload.get("exception_message", "")))
    node = f"node {payload.get('node_id')} ({payload.get('node_type')})"
    text = f"failed: {node}: {payload.get('exception_type')}: {message}"
    frames = TRACE_FRAME.findall("".join(str(line) for line in payload.get("traceback") or []))
    if frames:
        path, line, func = frames[-1]
        text += f" [at {short_path(path)}:{line} in {func}]"
    return text


def short_path(path: str) -> str:
    """A traceback path relative to the repository, or to the pack folder it lies in."""
    parts = Path(path).parts
    if "custom_nodes" in parts:  # the bench's links: custom_nodes/<pack>/...
        return "/".join(parts[len(parts) - parts[::-1].index("custom_nodes") :])
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def describe_rejection(body: Any) -> str:
    if not isinstance(body, dict):
        return first_line(str(body))
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        parts.append(first_line(f"{error.get('message', '')} {error.get('details', '')}"))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for err in node_error.get("errors", [])[:1]:
            detail = ": ".join(str(x) for x in (err.get("message"), err.get("details")) if x)
            parts.append(f"node {node_id} ({node_error.get('class_type')}): {detail}")
    return "; ".join(p for p in parts if p) or "rejected"


def pack_of_module(python_module: str) -> str | None:
    prefix = "custom_nodes."
    if not python_module.startswith(prefix):
        return None
    return python_module[len(prefix) :].split(".", 1)[0]


def prepare_models(home: Path, entries: list[Path]) -> Path:
    """Write the tiny models under ``home/models``; the extra_model_paths.yaml naming the
    pack-only folders among them."""
    if str(Path(__file__).parent) not in sys.path:  # loaded by path (the tests): find the sibling
        sys.path.insert(0, str(Path(__file__).parent))
    import pack_models  # noqa: PLC0415 - torch, only when a bench runs

    pack_models.write_models(home, {entry.name: entry for entry in entries})
    extra_paths = home.parent / "extra_model_paths.yaml"
    extra_paths.write_text(pack_models.extra_model_paths(home))
    return extra_paths


async def measure(
    entries: list[Path],
    smoke: dict[str, Any],
    timeout: float,
    startup_timeout: float,
    keep_log: Path | None,
    dump_info: Path | None = None,
) -> list[PackResult]:
    results = {p.name: PackResult(p.name, commit=short_commit(p)) for p in entries}
    with tempfile.TemporaryDirectory(prefix="packs-bench-") as tmp:
        base = Path(tmp)
        custom_nodes = base / "custom_nodes"
        custom_nodes.mkdir()
        for entry in entries:  # a folder of links: --only picks packs without touching DIR
            (custom_nodes / entry.name).symlink_to(entry.resolve())
        extra_paths = prepare_models(base / "home", entries)
        bench = Bench(base, custom_nodes, startup_timeout, extra_paths)
        try:
            try:
                await bench.wait_ready()
            except RuntimeError as exc:
                log = bench.log
                for result in results.values():
                    result.error = f"server did not start: {exc}"
                print(log[-4000:], file=sys.stderr)
                return list(results.values())
            errors = import_errors(bench.log)
            info = await bench.get_json("/object_info")
            if dump_info is not None:  # for writing smoke workflows: the packs' node interfaces
                mine = {k: v for k, v in info.items() if pack_of_module(str(v.get("python_module", "")))}
                dump_info.write_text(json.dumps(mine, indent=1))
            module_key = {}
            for name in results:
                # python_module names a single-file pack by its stem; a dot in a folder name is escaped.
                module_key[name.removesuffix(".py") if name.endswith(".py") else name.replace(".", "_x_")] = (
                    name
                )
            for node in info.values():
                pack = pack_of_module(str(node.get("python_module", "")))
                if pack in module_key:
                    results[module_key[pack]].classes += 1
            extensions = await bench.get_json("/extensions")
            for result in results.values():
                if result.name in errors:
                    result.error = errors[result.name]
                    result.blocker = blocker_of(result.error)
                else:
                    result.imported = True
                prefix = f"/extensions/{quote(result.name)}/"
                mine = [url for url in extensions if url.startswith(prefix)]
                result.js_listed = len(mine)
                result.js_served = sum([await bench.served(url) for url in mine])
            for result in results.values():
                await smoke_one(bench, result, smoke.get(result.name), info, timeout)
        finally:
            await bench.stop()
            if keep_log is not None:
                keep_log.write_bytes(bench.log_path.read_bytes())
    return list(results.values())


async def smoke_one(
    bench: Bench, result: PackResult, entry: Any, info: dict[str, Any], timeout: float
) -> None:
    if entry is None:
        return
    if "offline" in entry:  # documented: no workflow can run without downloading a model
        result.smoke = f"no offline workflow: {entry['offline']}"
        return
    prompt = entry["prompt"] if "prompt" in entry else entry
    if not result.imported:
        result.smoke = "not run (pack did not import)"
        return
    missing = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in info})
    if missing:
        result.smoke = "not run: no node " + ", ".join(missing)
        return
    try:
        result.smoke_ok, result.smoke = await bench.run_workflow(prompt, timeout)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        result.smoke = f"failed: bench error: {type(exc).__name__}: {exc}"


def render_text(results: list[PackResult]) -> str:
    rows = [("pack", "commit", "import", "classes", "js", "smoke")]
    for r in results:
        rows.append(
            (
                r.name,
                r.commit,
                "yes" if r.imported else f"error: {r.error}",
                str(r.classes),
                f"{r.js_served}/{r.js_listed}",
                r.smoke,
            )
        )
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [row[i][:60].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: list[PackResult]) -> str:
    lines = [
        "| pack | commit | loads | classes | JS served/listed | smoke workflow | blocked by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        loads = "yes" if r.imported else f"error: `{cell(r.error)}`"
        commit = f"`{r.commit}`" if r.commit else ""
        lines.append(
            f"| {cell(r.name)} | {commit} | {loads} | {r.classes} | {r.js_served}/{r.js_listed} "
            f"| {cell(r.smoke)} | {cell(r.blocker)} |"
        )
    return "\n".join(lines)


def blockers(results: list[PackResult]) -> str:
    """The import blockers, the one hitting most packs first: what to fix next."""
    hits: dict[str, list[str]] = {}
    for r in results:
        if not r.imported:
            hits.setdefault(r.blocker or r.error, []).append(r.name)
    ranked = sorted(hits.items(), key=lambda item: (-len(item[1]), item[0]))
    return "\n".join(f"{len(packs):3d}  {what}  ({', '.join(packs)})" for what, packs in ranked)


def has_workflow(result: PackResult) -> bool:
    return not result.smoke.startswith(("no workflow", "no offline workflow"))


def summary(results: list[PackResult]) -> str:
    imported = sum(r.imported for r in results)
    with_smoke = [r for r in results if has_workflow(r)]
    ran = sum(r.smoke_ok for r in with_smoke)
    return f"{imported}/{len(results)} packs imported, {ran}/{len(with_smoke)} smoke workflows ran"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a custom_nodes folder: one pack per entry")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="just these packs")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results")
    parser.add_argument("--log", type=Path, default=None, metavar="FILE", help="keep the server log here")
    parser.add_argument(
        "--object-info", type=Path, default=None, metavar="FILE", help="write the packs' /object_info entries"
    )
    parser.add_argument("--smoke", type=Path, default=SMOKE_FILE, help="pack name -> API-format prompt")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per smoke workflow")
    parser.add_argument(
        "--startup-timeout", type=float, default=1800.0, help="seconds for the server to start"
    )
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    smoke = json.loads(args.smoke.read_text()) if args.smoke.is_file() else {}
    smoke = {k: v for k, v in smoke.items() if not k.startswith("_")}
    entries = pack_entries(args.directory, set(args.only))
    if not entries:
        parser.error(f"no packs in {args.directory}")
    results = asyncio.run(
        measure(entries, smoke, args.timeout, args.startup_timeout, args.log, args.object_info)
    )
    print(render_markdown(results) if args.markdown else render_text(results))
    ranked = blockers(results)
    if ranked:
        print(
            "\nFirst import error, by packs hit:"
            if not args.markdown
            else "\nFirst import error, by packs hit:\n"
        )
        print(ranked if not args.markdown else "\n".join(f"    {line}" for line in ranked.splitlines()))
    print()
    print(summary(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
