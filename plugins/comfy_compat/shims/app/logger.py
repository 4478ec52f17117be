"""ComfyUI's ``app.logger``: startup warnings and the recent log lines, over the kernel's logging.

The kernel configures logging itself, so ``setup_logger`` only sets the level. Startup warnings
are kept in a module list because ``log_startup_warning``/``print_startup_warnings`` are the
reference's module API; the shims are reloaded per kernel, so the list lives as long as one server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

_startup_warnings: list[str] = []


def setup_logger(log_level: str = "INFO", capacity: int = 300, use_stdout: bool = False) -> None:
    logging.getLogger().setLevel(log_level.upper())


def log_startup_warning(msg: str) -> None:
    """Log ``msg`` now and again when startup is over (the reference repeats it at the end)."""
    logging.warning(msg)
    _startup_warnings.append(msg)


def print_startup_warnings() -> None:
    for msg in _startup_warnings:
        logging.warning(msg)
    _startup_warnings.clear()


def _buffer() -> Any | None:
    # The web UI's log buffer (frontend_ext) is a root-logger handler with a snapshot() of
    # {"t": time, "m": message} entries: found by that shape, the shims may not import the plugin.
    for handler in logging.getLogger().handlers:
        if callable(getattr(handler, "snapshot", None)) and getattr(handler, "kernel", None) is _kernel():
            return handler
    return None


def get_logs() -> list[dict[str, str]] | None:
    """The recent log entries (``{"t": time, "m": message}``), or None without a log buffer."""
    buffer = _buffer()
    return buffer.snapshot() if buffer is not None else None


def on_flush(callback: Callable[..., Any]) -> None:
    """Accepted for packs that subscribe; the web UI's log stream already reaches subscribers."""
    logging.getLogger("comfykernel.compat").debug("app.logger.on_flush(%r) ignored", callback)
