"""Version strings the server reports."""

from __future__ import annotations

from importlib import metadata


def package_version(dist: str) -> str | None:
    """An installed distribution's version, read from metadata (never imports the package)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


__version__ = package_version("comfykernel") or "0.0.0"
# The ComfyUI release whose HTTP/WS API this server speaks; clients compare against it.
COMFYUI_API_VERSION = "0.27.0"
