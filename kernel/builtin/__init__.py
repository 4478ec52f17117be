"""Essential plugins: always registered, refusing to be disabled (pytest's essential_plugins)."""

from __future__ import annotations

# name -> module. Kept import-free so the plugin manager can read it cheaply.
ESSENTIAL_PLUGINS: dict[str, str] = {
    "core": "kernel.builtin.core",
    "ws": "kernel.builtin.ws",
    "executor": "kernel.builtin.executor",
    "prompt_api": "kernel.builtin.prompt_api",
    "files": "kernel.builtin.files",
}
