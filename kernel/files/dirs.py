"""Create the input/output/temp roots and empty temp when the server starts."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel.settings import Settings

log = logging.getLogger("comfykernel.files")


def prepare_directories(settings: Settings) -> None:
    """mkdir the three roots; empty temp (its files only live as long as one server run)."""
    for root in (settings.input_path, settings.output_path, settings.temp_path):
        root.mkdir(parents=True, exist_ok=True)
    if _temp_is_shared(settings):
        log.warning(
            "not emptying temp directory %s: it contains or equals another data directory", settings.temp_path
        )
        return
    empty_directory(settings.temp_path)


def _temp_is_shared(settings: Settings) -> bool:
    # A misconfigured --temp-directory pointing at the base, input or output must not wipe them.
    temp = os.path.realpath(settings.temp_path)
    for other in (
        settings.base_path,
        settings.input_path,
        settings.output_path,
        settings.user_path,
        settings.models_path,
    ):
        real = os.path.realpath(other)
        if real == temp or real.startswith(temp.rstrip(os.sep) + os.sep):
            return True
    return False


def empty_directory(path: Path) -> None:
    """Remove everything inside ``path``; symlinks are removed, never followed."""
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                log.warning("could not remove %s from temp: %s", entry.path, exc)
