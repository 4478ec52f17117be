"""Where the web UI's files come from, and the static mounts that serve them."""

from __future__ import annotations

import argparse
import importlib.resources
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kernel import StartupError, StashKey

if TYPE_CHECKING:
    from kernel import Kernel

log = logging.getLogger("comfykernel.frontend")

FRONTEND_PACKAGE = "comfyui_frontend_package"
DOCS_PACKAGE = "comfyui_embedded_docs"

# None when no frontend is installed: the API still works, ``/`` answers 404.
WEB_ROOT = StashKey["Path | None"]()


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--front-end-root",
        default=None,
        metavar="DIR",
        help="serve the web UI from this directory instead of the comfyui-frontend-package install",
    )


def package_dir(package: str, subdir: str) -> Path | None:
    """``<package>/<subdir>`` of an installed distribution as a real directory, or None."""
    try:
        path = Path(str(importlib.resources.files(package) / subdir))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if path.is_dir() else None


def resolve_web_root(kernel: Kernel) -> Path | None:
    configured = kernel.settings.extra.get("front_end_root")
    if configured:
        root = Path(configured).expanduser().resolve()
        if not (root / "index.html").is_file():
            raise StartupError(f"--front-end-root {configured!r} has no index.html")
        return root
    root = package_dir(FRONTEND_PACKAGE, "static")
    if root is None:
        log.warning("comfyui-frontend-package is not installed: serving the API without the web UI")
    return root


def static_routes(kernel: Kernel) -> list[tuple[str, str]]:
    """The embedded docs, then the web root last of all.

    Pack web directories are served by a handler (``routes.extension_file``) instead: aiohttp's
    static prefixes never match names that need URL quoting, and pack names often do.
    """
    pairs: list[tuple[str, str]] = []
    docs = package_dir(DOCS_PACKAGE, "docs")
    if docs is not None:
        pairs.append(("/docs", str(docs)))
    root = kernel.stash.get(WEB_ROOT, None)
    if root is not None:
        pairs.append(("/", str(root)))
    return pairs


# Distributions behind the routes of this plugin, reported in /system_stats.
SERVED_DISTRIBUTIONS = (
    "comfyui-frontend-package",
    "comfyui-workflow-templates",
    "comfyui-workflow-templates-core",
    "comfyui-workflow-templates-json",
    "comfyui-embedded-docs",
    "comfyui-subgraph-blueprints",
)


def package_versions() -> list[dict[str, str | None]]:
    """``comfy_package_versions`` as the web UI reads it: a list of ``{name, installed, required}``.

    Nothing pins other versions than the installed ones, so ``required`` equals ``installed``
    and the UI's "outdated package" warning stays quiet.
    """
    from importlib import metadata

    rows: list[dict[str, str | None]] = []
    for name in SERVED_DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        rows.append({"name": name, "installed": version, "required": version})
    return rows
