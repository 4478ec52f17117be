"""GET /extensions: the JavaScript files the web UI imports at boot."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from kernel.registry import WebExtensionRegistry


def _js_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.js") if p.is_file())


def list_extensions(web_root: Path | None, registry: WebExtensionRegistry) -> list[str]:
    urls: list[str] = []
    if web_root is not None:
        urls += [f"/extensions/{rel}" for rel in _js_files(web_root / "extensions")]
    for ext in registry.entries.values():
        urls += [f"/extensions/{quote(ext.name)}/{rel}" for rel in _js_files(ext.directory)]
    return urls
