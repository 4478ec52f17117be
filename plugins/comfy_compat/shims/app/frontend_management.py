"""ComfyUI's ``app.frontend_management``: which web UI the server serves, and the versions involved.

The web UI always comes from the installed ``comfyui-frontend-package`` (or ``--front-end-root``);
nothing is downloaded, so the "required" versions are the installed ones, as ``/system_stats``
reports them.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from comfykernel_compat_runtime import kernel as _kernel

from kernel.version import package_version

FRONTEND_PACKAGE = "comfyui-frontend-package"
TEMPLATES_PACKAGE = "comfyui-workflow-templates"


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` as ``(1, 2, 3)``."""
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return major, minor, patch


def get_required_frontend_version() -> str | None:
    return package_version(FRONTEND_PACKAGE)


def _package_dir(module: str, subdir: str) -> str | None:
    try:
        path = Path(str(importlib.resources.files(module) / subdir))
    except (ModuleNotFoundError, TypeError):
        return None
    return str(path) if path.is_dir() else None


class FrontendManager:
    """The reference's class-level API; every answer describes the running server."""

    # Where the reference unpacks downloaded frontends; nothing is downloaded here.
    CUSTOM_FRONTENDS_ROOT = str(Path(__file__).resolve().parent / "web_custom_versions")

    @classmethod
    def get_required_frontend_version(cls) -> str | None:
        return get_required_frontend_version()

    @classmethod
    def get_installed_templates_version(cls) -> str | None:
        return package_version(TEMPLATES_PACKAGE)

    @classmethod
    def get_required_templates_version(cls) -> str | None:
        return package_version(TEMPLATES_PACKAGE)

    @classmethod
    def default_frontend_path(cls) -> str | None:
        return _package_dir("comfyui_frontend_package", "static")

    @classmethod
    def templates_path(cls) -> str | None:
        return _package_dir("comfyui_workflow_templates", "templates")

    @classmethod
    def embedded_docs_path(cls) -> str | None:
        return _package_dir("comfyui_embedded_docs", "docs")

    @classmethod
    def init_frontend(cls, version_string: str | None = None) -> str | None:
        """The folder the web UI is served from (``version_string`` is accepted and ignored)."""
        root = _kernel().settings.extra.get("front_end_root")
        return str(Path(root).resolve()) if root else cls.default_frontend_path()
