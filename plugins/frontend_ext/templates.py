"""Workflow templates: packs' example workflows and the core template packages.

``GET /workflow_templates`` maps each pack to its template names; files are looked up by name in
a table built from the pack directories, never by joining client input onto a path. The core
templates (``comfyui-workflow-templates-json`` and, when installed, the media bundles) are
served under ``/templates/``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from kernel.paths import safe_join
from plugins.frontend_ext.packs import NodePack
from plugins.frontend_ext.webroot import package_dir

# In priority order: a stem seen in an earlier folder keeps its plain name.
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")

# Packages holding a ``templates/`` folder; the core loader's bundle map adds any newer ones.
_TEMPLATE_PACKAGES = (
    "comfyui_workflow_templates_json",
    "comfyui_workflow_templates_media_api",
    "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_other",
    "comfyui_workflow_templates_media_assets_01",
    "comfyui_workflow_templates_media_assets_02",
    # before 0.3.0 one package held everything
    "comfyui_workflow_templates",
)


def pack_templates(pack: NodePack) -> dict[str, Path]:
    """Template name → file for one pack, with alias-folder duplicates suffixed."""
    names: dict[str, Path] = {}
    seen_dirs: set[str] = set()
    for folder in TEMPLATE_FOLDERS:
        directory = pack.directory / folder
        if not directory.is_dir():
            continue
        real = os.path.realpath(directory)
        if real in seen_dirs:  # a symlinked alias of a folder already read
            continue
        seen_dirs.add(real)
        for path in sorted(directory.glob("*.json")):
            if not path.is_file():
                continue
            name = path.stem
            if name in names:
                name = f"{path.stem}-{folder}"
                n = 1
                while name in names:
                    name = f"{path.stem}-{folder}-{n}"
                    n += 1
            names[name] = path
    return names


def build_template_index(packs: list[NodePack]) -> dict[str, dict[str, Path]]:
    return {pack.name: found for pack in packs if (found := pack_templates(pack))}


def core_template_roots() -> list[Path]:
    packages = list(_TEMPLATE_PACKAGES)
    try:
        loader = importlib.import_module("comfyui_workflow_templates_core.loader")
        packages += [p for p in getattr(loader, "BUNDLE_PACKAGE_MAP", {}).values() if p not in packages]
    except ImportError:
        pass
    return [root for package in packages if (root := package_dir(package, "templates")) is not None]


def find_core_template(roots: list[Path], relative: str) -> Path | None:
    """The first root holding ``relative``; raises ``UnsafePath`` for names escaping a root."""
    for root in roots:
        path = safe_join(root, relative)
        if path.is_file():
            return path
    return None
