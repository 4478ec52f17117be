"""ComfyUI's ``nodes`` module: the kernel's live node registry under the reference's names.

``from nodes import KSampler`` gives the registered class of that name (core nodes included).
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` are live views of every registered node;
packs also write them (``nodes.NODE_CLASS_MAPPINGS.update(...)``): a new name is registered in the
kernel for the pack doing the write, while a name already there keeps its class, as the kernel
never lets a custom node replace another one. ``EXTENSION_WEB_DIRS`` is the kernel's web-extension
table: a directory written there is served under ``/extensions/<name>/`` and listed by
``/extensions``. ``common_ksampler`` is the reference's sampling helper over the core KSampler's
own plumbing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import folder_paths  # noqa: F401 - the reference module imports it and packs read ``nodes.folder_paths``
from comfykernel_compat_runtime import kernel as _kernel
from comfykernel_compat_runtime import state as _state

from kernel.registry import WebExtension
from kernel.stash import StashKey

log = logging.getLogger("comfykernel.compat")

# The reference's limit on widths and heights (the core nodes use the same number).
MAX_RESOLUTION = 16384
# Where packs load from (``custom_nodes.<pack>``): a write to the mappings from such a module is
# registered under that pack's plugin name.
_PACKS_PREFIX = "custom_nodes."
_RUNTIME_PLUGIN = "comfy_compat"
# Display names written before their node's class, per kernel (see _LiveMapping.__setitem__).
_PENDING_NAMES = StashKey[dict[str, str]]()


def _writing_plugin() -> str:
    """``legacy:<pack>`` of the pack module on the call stack, else the compat plugin itself."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_PACKS_PREFIX):
            # The loader spells a "." in a pack's name as "_x_" in its module name.
            return "legacy:" + module[len(_PACKS_PREFIX) :].partition(".")[0].replace("_x_", ".")
        frame = frame.f_back  # type: ignore[assignment]
    return _RUNTIME_PLUGIN


class _LiveMapping(MutableMapping[str, Any]):
    """One column (class or display name) of the kernel's node registry, as a dict packs can write."""

    def __init__(self, pick: str) -> None:
        self._pick = pick

    def __getitem__(self, name: str) -> Any:
        entry = _kernel().nodes.get(name)
        if entry is None:
            raise KeyError(name)
        if self._pick == "cls":
            return entry.cls
        return entry.display_name or entry.name

    def __setitem__(self, name: str, value: Any) -> None:
        nodes = _kernel().nodes
        entry = nodes.get(name)
        if self._pick == "display_name":
            if entry is None:
                # Packs may name a node before writing its class; the name waits for the class.
                _kernel().stash.setdefault(_PENDING_NAMES, {})[name] = str(value)
                return
            # NodeRegistry has no rename; its entries are frozen, so the entry is swapped whole.
            nodes._nodes[name] = dataclasses.replace(entry, display_name=str(value))
            return
        if entry is not None:
            if entry.cls is not value:
                log.warning(
                    "NODE_CLASS_MAPPINGS[%r] = %r ignored: %r of plugin %s stays registered",
                    name,
                    value,
                    entry.cls,
                    entry.plugin,
                )
            return
        if not isinstance(name, str) or not name or not isinstance(value, type):
            raise TypeError(
                f"NODE_CLASS_MAPPINGS[{name!r}] must be a class under a non-empty name, not {value!r}"
            )
        display_name = _kernel().stash.get(_PENDING_NAMES, {}).pop(name, None)
        nodes.register(_writing_plugin(), name, value, display_name)

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"nodes are never unregistered while the server runs (NODE_CLASS_MAPPINGS[{name!r}])")

    def __iter__(self) -> Iterator[str]:
        return iter(_kernel().nodes.names())

    def __len__(self) -> int:
        return len(_kernel().nodes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _kernel().nodes.get(name) is not None

    def __repr__(self) -> str:
        return f"<live {self._pick} view of {len(self)} nodes>"


class _WebDirs(MutableMapping[str, str]):
    """``EXTENSION_WEB_DIRS``: web-extension name -> folder, the kernel's table behind ``/extensions``."""

    def __getitem__(self, name: str) -> str:
        return str(_kernel().web_extensions.entries[name].directory)

    def __setitem__(self, name: str, directory: str | os.PathLike[str]) -> None:
        entries = _kernel().web_extensions.entries
        path = Path(os.fspath(directory)).resolve()
        existing = entries.get(name)
        if existing is not None and existing.directory.resolve() != path:
            log.warning(
                "EXTENSION_WEB_DIRS[%r] now serves %s instead of %s (plugin %s)",
                name,
                path,
                existing.directory,
                existing.plugin,
            )
        entries[name] = WebExtension(name, path, existing.plugin if existing else _writing_plugin())

    def __delitem__(self, name: str) -> None:
        del _kernel().web_extensions.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(_kernel().web_extensions.entries))

    def __len__(self) -> int:
        return len(_kernel().web_extensions.entries)


NODE_CLASS_MAPPINGS: MutableMapping[str, type] = _LiveMapping("cls")
NODE_DISPLAY_NAME_MAPPINGS: MutableMapping[str, str] = _LiveMapping("display_name")
EXTENSION_WEB_DIRS: MutableMapping[str, str] = _WebDirs()


def __getattr__(name: str) -> Any:
    if name == "LOADED_MODULE_DIRS":
        # pack module name -> its folder, for the packs imported so far.
        return {pack.name: str(pack.path) for pack in _state().packs if pack.error is None}
    entry = _kernel().nodes.get(name)
    if entry is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    return entry.cls


def common_ksampler(
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[Any],
    negative: list[Any],
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> tuple[dict[str, Any]]:
    """Sample the LATENT ``latent`` as the core KSampler / KSamplerAdvanced do: ``(new LATENT,)``,
    with the same noise, progress, interruption and latent previews."""
    from comfy.sample import fix_empty_latent_channels

    from plugins.core_nodes.ksampler import preview_options, run_ksampler

    latent = dict(latent)
    latent["samples"] = fix_empty_latent_channels(
        model, latent["samples"], latent.get("downscale_ratio_spacial")
    )
    out = run_ksampler(
        model,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        denoise=denoise,
        disable_noise=disable_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
        preview=preview_options(_kernel()),
    )
    return (out,)


def interrupt_processing(value: bool = True) -> None:
    if value and _kernel().executor is not None:
        _kernel().executor.interrupt()


def before_node_execution() -> None:
    """Raise the interruption exception if the running prompt was interrupted (packs' executors call it)."""
    from kernel.progress import throw_if_interrupted

    throw_if_interrupted()


def get_module_name(module_path: str) -> str:
    """The pack name of a pack path: the folder name, or the file name without ``.py``."""
    base = os.path.basename(os.path.normpath(module_path))
    if os.path.isfile(module_path):
        base = os.path.splitext(base)[0]
    return base


async def load_custom_node(module_path: str, ignore: Any = (), module_parent: str = "custom_nodes") -> bool:
    """Import one more pack while the server runs; its nodes and web folder join the kernel's tables.

    Returns False (and logs why) when the import fails, as the reference does. Names already
    registered, and those in ``ignore``, keep their current class.
    """
    from plugins.comfy_compat.loader import PackSource, load_pack

    path = Path(module_path)
    pack = load_pack(PackSource(get_module_name(module_path), path, "legacy"))
    if pack.error is not None:
        return False
    _state().packs.append(pack)
    kernel = _kernel()
    for name, (cls, display_name) in pack.nodes.items():
        if name in ignore or kernel.nodes.get(name) is not None or not isinstance(cls, type):
            continue
        kernel.nodes.register(pack.plugin_name, name, cls, display_name)
    if pack.web_dir is not None and pack.name not in kernel.web_extensions.entries:
        kernel.web_extensions.entries[pack.name] = WebExtension(pack.name, pack.web_dir, pack.plugin_name)
    return True


async def init_extra_nodes(init_custom_nodes: bool = True, init_api_nodes: bool = True) -> list[str]:
    """The server loaded every pack at startup already; nothing is left to import (no failures)."""
    return []
