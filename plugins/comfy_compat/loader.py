"""Find ComfyUI custom-node packs, run their prestartup scripts, import them, report the times.

Folders: ``<base>/custom_nodes``, the ``custom_nodes:`` entries of extra_model_paths.yaml (kept
by the models plugin as the ``custom_nodes`` kind) and every ``--custom-nodes-dir``; packs
published under the ``comfyui.custom_nodes`` entry-point group come after them. A pack is a
folder with ``__init__.py`` or a single ``.py`` file; ``*.disabled`` and ``__pycache__`` are
skipped. A pack that fails to import is reported (``IMPORT FAILED``) and the server carries on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import logging
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kernel.plugins import DiscoveredPlugin
from plugins.comfy_compat import manager
from plugins.comfy_compat.packs import LegacyPackPlugin
from plugins.comfy_compat.shimming import PACKS_PACKAGE
from plugins.comfy_compat.state import CompatState, LoadedPack

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.compat")

ENTRY_POINT_GROUP = "comfyui.custom_nodes"


@dataclass(frozen=True)
class PackSource:
    name: str
    path: Path
    source: str  # "legacy" | "entrypoint"
    entry_point: Any = None


def custom_node_folders(kernel: Kernel) -> list[Path]:
    folders = [kernel.settings.base_path / "custom_nodes"]
    if kernel.models is not None:
        try:
            folders += kernel.models.folder_paths("custom_nodes")
        except KeyError:  # the models plugin knows no custom_nodes kind in this build
            pass
    folders += [Path(d) for d in kernel.settings.custom_nodes_dir]
    unique: dict[Path, None] = {}
    for folder in folders:
        unique.setdefault(Path(folder).resolve(), None)
    return list(unique)


def find_packs(folders: list[Path]) -> list[PackSource]:
    found: dict[str, PackSource] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name == "__pycache__" or entry.name.endswith(".disabled") or entry.name.startswith("."):
                continue
            if entry.is_dir() and (entry / "__init__.py").is_file():
                name = entry.name
            elif entry.is_file() and entry.suffix == ".py":
                name = entry.stem
            else:
                continue
            if name in found:
                log.warning(
                    "custom node pack %s: also found at %s; keeping the first", entry, found[name].path
                )
                continue
            found[name] = PackSource(name, entry, "legacy")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning(
                "custom node pack %r from entry point %s clashes with a folder; skipped", ep.name, ep.value
            )
            continue
        found[ep.name] = PackSource(ep.name, Path(), "entrypoint", ep)
    return list(found.values())


def _module_name(name: str) -> str:
    return f"{PACKS_PACKAGE}.{name.replace('.', '_x_')}"


def _exec_file(module_name: str, file: Path, package_dir: Path | None = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        module_name, file, submodule_search_locations=[str(package_dir)] if package_dir else None
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        raise
    return module


def run_prestartup_scripts(sources: list[PackSource]) -> None:
    """Each pack folder's ``prestartup_script.py``, before any pack is imported."""
    times: list[tuple[float, Path, bool]] = []
    for src in sources:
        script = src.path / "prestartup_script.py"
        if src.source != "legacy" or not script.is_file():
            continue
        started = time.perf_counter()
        ok = True
        try:
            _exec_file(f"{_module_name(src.name)}_prestartup", script)
        except Exception:
            ok = False
            log.error("Failed to execute startup-script: %s\n%s", script, traceback.format_exc())
        times.append((time.perf_counter() - started, src.path, ok))
    if times:
        lines = [f"{t:6.1f} seconds{'' if ok else ' (PRESTARTUP FAILED)'}: {p}" for t, p, ok in sorted(times)]
        log.info("Prestartup times for custom nodes:\n%s", "\n".join(lines))


def _await(value: Any) -> Any:
    """Await ``value`` if it is awaitable, on a private loop (the kernel may be built inside one)."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _collect(pack: LoadedPack, module: ModuleType, module_dir: Path) -> None:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        for name, cls in dict(mappings).items():
            pack.nodes[name] = (cls, names.get(name))
    elif callable(getattr(module, "comfy_entrypoint", None)):
        extension = _await(module.comfy_entrypoint())
        _await(extension.on_load())
        for cls in _await(extension.get_node_list()) or ():
            schema = cls.define_schema()
            pack.nodes[schema.node_id] = (cls, schema.display_name)
    else:
        raise ImportError("the module has neither NODE_CLASS_MAPPINGS nor comfy_entrypoint")
    python_module = f"{PACKS_PACKAGE}.{pack.name}"
    for cls, _ in pack.nodes.values():
        # Only the pack's own classes: one re-exporting a core node must not relabel it.
        owner = getattr(cls, "__module__", "")
        if isinstance(cls, type) and (owner == pack.module_name or owner.startswith(pack.module_name + ".")):
            cls.RELATIVE_PYTHON_MODULE = python_module  # type: ignore[attr-defined]
    pack.web_dir = _web_dir(module, module_dir)


def _web_dir(module: ModuleType, module_dir: Path) -> Path | None:
    web = getattr(module, "WEB_DIRECTORY", None)
    if web is None:
        pyproject = module_dir / "pyproject.toml"
        if pyproject.is_file():
            try:
                web = tomllib.loads(pyproject.read_text()).get("tool", {}).get("comfy", {}).get("web")
            except (OSError, tomllib.TOMLDecodeError):
                web = None
    if not isinstance(web, str):
        return None
    directory = (module_dir / web).resolve()
    return directory if directory.is_dir() else None


def load_pack(src: PackSource) -> LoadedPack:
    """Import one pack; never raises (a failure is recorded on the result)."""
    started = time.perf_counter()
    if src.source == "entrypoint":
        pack = LoadedPack(src.name, src.path, src.source, src.entry_point.value.partition(":")[0])
    else:
        pack = LoadedPack(src.name, src.path, src.source, _module_name(src.name))
    try:
        if src.source == "entrypoint":
            loaded = src.entry_point.load()
            module = loaded if isinstance(loaded, ModuleType) else sys.modules[pack.module_name]
            module_dir = Path(module.__file__ or ".").resolve().parent
            pack.path = module_dir
        elif src.path.is_dir():
            module = _exec_file(pack.module_name, src.path / "__init__.py", src.path)
            module_dir = src.path
        else:
            module = _exec_file(pack.module_name, src.path)
            module_dir = src.path.parent
        pack.module = module
        _collect(pack, module, module_dir)
    except BaseException as exc:  # a pack's import may raise anything, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        pack.error = f"{type(exc).__name__}: {exc}"
        pack.nodes.clear()
        log.warning(
            "Cannot import %s module for custom nodes: %s\n%s", src.path, pack.error, traceback.format_exc()
        )
    pack.seconds = time.perf_counter() - started
    return pack


def log_report(packs: list[LoadedPack]) -> None:
    if not packs:
        return
    lines = []
    for pack in sorted(packs, key=lambda p: p.seconds):
        failed = " (IMPORT FAILED)" if pack.error else ""
        where = pack.path if pack.source == "legacy" else f"{pack.module_name} (entry point {pack.name})"
        lines.append(f"{pack.seconds:6.1f} seconds{failed}: {where}")
    log.info("Import times for custom nodes:\n%s", "\n".join(lines))


def _allowed_by_manager(kernel: Kernel, sources: list[PackSource]) -> list[PackSource]:
    kept = []
    for src in sources:
        if src.source == "legacy" and manager.blocks(kernel, src.path):
            # The reference's words; such a pack is neither prestarted nor imported nor listed.
            log.info("Blocked by policy: %s", src.path)
            continue
        kept.append(src)
    return kept


def discover(kernel: Kernel, state: CompatState) -> list[DiscoveredPlugin]:
    # ComfyUI-Manager's prestartup comes before every pack's, even with all packs off.
    manager.prestartup(kernel)
    if kernel.settings.disable_all_custom_nodes:
        log.info("Skipping loading of custom nodes (--disable-all-custom-nodes)")
        manager.start(kernel)
        return []
    disabled = set(kernel.settings.disabled)
    sources = _allowed_by_manager(kernel, find_packs(custom_node_folders(kernel)))
    wanted = [s for s in sources if f"legacy:{s.name}" not in disabled]
    run_prestartup_scripts(wanted)
    # The reference starts the Manager (its routes) after the prestartup scripts, before imports.
    manager.start(kernel)
    found: list[DiscoveredPlugin] = []
    for src in sources:
        name = f"legacy:{src.name}"
        where = str(src.path) if src.source == "legacy" else str(src.entry_point.value)
        if name in disabled:
            found.append(DiscoveredPlugin(name, src.source, where))
            continue
        pack = load_pack(src)
        state.packs.append(pack)
        plugin = None if pack.error else LegacyPackPlugin(pack)
        found.append(DiscoveredPlugin(name, src.source, where, plugin, pack.error, pack.seconds))
    log_report(state.packs)
    return found
