"""Put the compatibility modules on ``sys.path`` / ``sys.modules`` and take them off again.

ComfyUI packs import ``folder_paths``, ``server``, ``comfy.*``... as top-level modules, so the
shims have to be process globals; they are bound to one kernel (the last one configured) and
exist only between that kernel's ``configure`` and ``shutdown``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.comfy_compat.state import CompatState

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.compat")

SHIMS_DIR = Path(__file__).resolve().parent / "shims"
# The reference puts its ``comfy`` folder on sys.path too, so packs written for older layouts
# import ``model_management``, ``sd``, ``utils``... by their bare names (a second module object
# there as here; ours share their state through the kernel).
COMFY_DIR = SHIMS_DIR / "comfy"
SHIM_MODULES = (
    "comfykernel_compat_runtime",
    "folder_paths",
    "server",
    "nodes",
    "comfy",
    "comfy_execution",
    "comfy_api",
    "node_helpers",
    "latent_preview",
    "execution",
    "comfy_extras",
    "app",
    "comfyui_version",
)
# Packs are imported as submodules of this synthetic package (``custom_nodes.<pack>``).
PACKS_PACKAGE = "custom_nodes"


def _owned(name: str) -> bool:
    top = name.partition(".")[0]
    return top in SHIM_MODULES or top == PACKS_PACKAGE


def _is_shim(module: types.ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and Path(file).resolve().is_relative_to(SHIMS_DIR)


def _drop_modules(state: CompatState | None) -> None:
    for name, module in list(sys.modules.items()):
        if module is None:
            continue
        if (_owned(name) and name.partition(".")[0] == PACKS_PACKAGE) or _is_shim(module):
            # Shim modules go whatever their name: bare ``model_management`` came from COMFY_DIR.
            del sys.modules[name]
    if state is not None:
        sys.modules.update(state.shadowed)
        state.shadowed.clear()


def _remove_paths() -> None:
    for path in (str(SHIMS_DIR), str(COMFY_DIR)):
        while path in sys.path:
            sys.path.remove(path)


def install(kernel: Kernel, state: CompatState) -> None:
    if str(SHIMS_DIR) in sys.path:
        # Another kernel in this process had them (tests build many); this one takes over.
        log.debug("compat shims were installed for another kernel; rebinding")
        _remove_paths()
        _drop_modules(None)
    for name in list(sys.modules):
        if _owned(name) and not _is_shim(sys.modules[name]):
            state.shadowed[name] = sys.modules.pop(name)
    sys.path.insert(0, str(SHIMS_DIR))
    sys.path.insert(1, str(COMFY_DIR))
    importlib.invalidate_caches()
    runtime = importlib.import_module("comfykernel_compat_runtime")
    runtime.bind(kernel, state)
    server = importlib.import_module("server")
    state.prompt_server = server.PromptServer(kernel, state.routes)
    package = types.ModuleType(PACKS_PACKAGE)
    package.__path__ = []
    sys.modules[PACKS_PACKAGE] = package


def uninstall(state: CompatState) -> None:
    runtime = sys.modules.get("comfykernel_compat_runtime")
    if runtime is None or runtime.state() is not state:
        return  # a later kernel has taken the shims over; they are its to remove
    _remove_paths()
    for pack in state.packs:
        if pack.module is not None and pack.source == "entrypoint":
            # Installed packages may be imported again by a later kernel: drop their cached modules.
            for name in [
                n for n in sys.modules if n == pack.module_name or n.startswith(pack.module_name + ".")
            ]:
                del sys.modules[name]
    _drop_modules(state)
    importlib.invalidate_caches()
