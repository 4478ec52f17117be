"""Execution outputs become assets: every ``type: output`` file of a finished prompt, with its prompt_id."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kernel.events import PromptFinished
from kernel.paths import UnsafePath, resolve_file
from plugins.assets import records
from plugins.assets.state import STATE

if TYPE_CHECKING:
    from pathlib import Path

    from kernel import Kernel

log = logging.getLogger("comfykernel.assets")


def output_files(outputs: dict[str, Any]) -> list[tuple[str, str]]:
    """``(subfolder, filename)`` of each output-type file named in a prompt's UI outputs.

    Nodes list files under ``images``, ``gifs``, ``audio``, ``video``, ... as dicts with
    ``filename`` / ``subfolder`` / ``type``; any list of such dicts counts.
    """
    found: list[tuple[str, str]] = []
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if (
                    isinstance(item, dict)
                    and item.get("type") == "output"
                    and isinstance(item.get("filename"), str)
                    and isinstance(item.get("subfolder", ""), str)
                ):
                    pair = (item.get("subfolder", ""), item["filename"])
                    if pair not in found:
                        found.append(pair)
    return found


def on_event(kernel: Kernel, event: Any) -> None:
    if not isinstance(event, PromptFinished):
        return
    state = kernel.stash.get(STATE, None)
    if state is None:
        return
    files = output_files(event.outputs or {})
    if not files:
        return
    owner = ""
    if kernel.settings.multi_user:
        extra = getattr(event.item, "extra_data", None) or {}
        owner = str(extra.get("comfy_user") or "default")
    state.submit(_register, kernel, files, event.item.prompt_id, owner)


def _register(kernel: Kernel, files: list[tuple[str, str]], prompt_id: str, owner: str) -> None:
    state = kernel.stash[STATE]
    root = kernel.settings.output_path
    batch = []
    for subfolder, filename in files:
        try:
            path: Path = resolve_file(kernel, "output", subfolder, filename)
            if not path.is_file():
                continue
            meta = records.file_metadata("output", root, path)
            batch.append(
                records.describe(str(path), ["output"], path.name, meta, owner=owner, prompt_id=prompt_id)
            )
        except (UnsafePath, OSError) as exc:
            log.warning("not registering output %r/%r of %s: %s", subfolder, filename, prompt_id, exc)
    if batch:
        state.store.record_files(batch)
