"""ComfyUI-Manager (the PyPI ``comfyui_manager`` package) run the way the reference's main.py runs it.

With ``--enable-manager`` (or ``--enable-manager-legacy-ui``, which implies it) the package is
imported at configure time, after the shims are installed (it imports ``comfy.cli_args``,
``folder_paths``, ``server``, ``nodes``, ``comfy_api.feature_flags`` by their ComfyUI names).
Then, in the reference's order, while the legacy packs are discovered:

1. ``prestartup()`` before any pack's ``prestartup_script.py``;
2. ``should_be_disabled(path)`` for every pack folder: a pack it refuses is neither prestarted nor
   imported ("Blocked by policy");
3. ``start()`` (unless ``--disable-manager-ui``) after the prestartup scripts and before the packs
   are imported. It registers its ``/v2/...`` handlers on ``PromptServer.instance.routes`` while
   its server module is imported; the plugin collects that table at ``register_routes``, which
   the kernel asks after discovery, so they are served like any pack's routes;
4. its ``create_middleware()`` joins the app's middlewares, with or without the UI;
5. ``/features`` and the WebSocket flags carry ``extension.manager`` (``supports_v4`` from the
   ``comfy_api.feature_flags`` shim, ``supports_csrf_post`` written there by the package): with
   ``--enable-manager`` in ``/system_stats`` argv, that is what makes the web UI offer its dialog.

Without the package the server logs how to install it and starts without it, as the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kernel import StashKey
from plugins.comfy_compat.shimming import SHIMS_DIR

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.compat")

PACKAGE = "comfyui_manager"
# The release this server is tested with (pyproject's test extras pin the same one).
PINNED_REQUIREMENT = "comfyui_manager==4.2.2"


@dataclass
class ManagerRun:
    """The imported package and what this server asked of it."""

    module: ModuleType
    serve_ui: bool
    started: bool = False


MANAGER = StashKey[ManagerRun]()


def install_hint() -> str:
    """What to run to get the package (logged when ``--enable-manager`` finds none)."""
    hint = (
        "--enable-manager needs the comfyui-manager package, which is not installed; "
        "the server starts without ComfyUI-Manager. Install it with:\n"
        f"\t{sys.executable} -m pip install {PINNED_REQUIREMENT}"
    )
    if shutil.which("uv") is not None:
        hint += f"\nor with uv:\n\tuv pip install {PINNED_REQUIREMENT}"
    return hint


def wanted(kernel: Kernel) -> bool:
    settings = kernel.settings
    return bool(settings.enable_manager or settings.enable_manager_legacy_ui)


def _import_package() -> ModuleType | None:
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    try:
        module = importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE:
            log.exception("importing %s failed", PACKAGE)
        return None
    except Exception:
        # The reference would crash here; a broken install should not take the server down.
        log.exception("importing %s failed", PACKAGE)
        return None
    # A bare folder of that name on sys.path imports as a namespace package: not the Manager.
    file = getattr(module, "__file__", None)
    if not file or not file.endswith("__init__.py"):
        return None
    return module


def _point_at_this_server(kernel: Kernel) -> None:
    """Tell the Manager where "ComfyUI" is, before it reads its environment at import.

    Left alone it takes the folder of ``__main__`` (comfykernel's, or pytest's); the reference's
    equivalent is the folder holding ``folder_paths.py``, which for us is the shims folder. The
    Manager also hands these variables to its helper subprocesses, so they must be process
    environment; values the user set are kept.
    """
    os.environ.setdefault("COMFYUI_PATH", str(SHIMS_DIR))
    os.environ.setdefault("COMFYUI_FOLDERS_BASE_PATH", str(kernel.settings.base_path))
    # The Manager lists and installs into <base>/custom_nodes and fails on a missing folder
    # (a reference checkout always has one).
    (kernel.settings.base_path / "custom_nodes").mkdir(parents=True, exist_ok=True)


def configure(kernel: Kernel) -> None:
    """Import the package when the manager is wanted; needs the shims installed."""
    if not wanted(kernel):
        return
    cli_args = importlib.import_module("comfy.cli_args")
    _point_at_this_server(kernel)
    module = _import_package()
    if module is None:
        log.warning(install_hint())
        # As the reference: from here on the manager is off for everything that asks args.
        cli_args.args.enable_manager = False
        cli_args.args.enable_manager_legacy_ui = False
        return
    kernel.stash[MANAGER] = ManagerRun(module, serve_ui=not kernel.settings.disable_manager_ui)


def running(kernel: Kernel) -> ManagerRun | None:
    return kernel.stash.get(MANAGER, None)


def prestartup(kernel: Kernel) -> None:
    """``comfyui_manager.prestartup()``: before any pack's prestartup script."""
    run = running(kernel)
    if run is None:
        return
    try:
        run.module.prestartup()
    except Exception:
        log.exception("ComfyUI-Manager's prestartup failed")


def blocks(kernel: Kernel, path: Path) -> bool:
    """Whether the Manager refuses the pack at ``path`` (a stale git-clone copy of itself)."""
    run = running(kernel)
    if run is None:
        return False
    try:
        return bool(run.module.should_be_disabled(str(path)))
    except Exception:
        log.exception("ComfyUI-Manager's should_be_disabled(%s) failed; loading the pack", path)
        return False


def start(kernel: Kernel) -> None:
    """``comfyui_manager.start()``: registers its routes; before the packs are imported."""
    run = running(kernel)
    if run is None or not run.serve_ui or run.started:
        return
    run.started = True
    try:
        run.module.start()
    except Exception:
        log.exception("ComfyUI-Manager's start failed; its routes may be missing")


def middlewares(kernel: Kernel) -> list[Callable[..., Any]]:
    """The Manager's request policy middleware (the reference adds it with or without the UI)."""
    run = running(kernel)
    if run is None:
        return []
    try:
        return [run.module.create_middleware()]
    except Exception:
        log.exception("ComfyUI-Manager's create_middleware failed")
        return []


def shutdown(kernel: Kernel) -> None:
    """Forget the package's modules so a later kernel in this process imports it afresh.

    Its server module registers routes on ``PromptServer.instance.routes`` while it is imported;
    a cached module would leave the next kernel's route table empty.
    """
    if kernel.stash.get(MANAGER, None) is None:
        return
    del kernel.stash[MANAGER]
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
