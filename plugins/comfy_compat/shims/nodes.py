"""ComfyUI's ``nodes`` module: the kernel's live node registry under the reference's names.

``from nodes import KSampler`` gives the registered class of that name (core nodes included);
``NODE_CLASS_MAPPINGS`` is a read-only view of every registered node, always current.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel

# The reference's limit on widths and heights (the core nodes use the same number).
MAX_RESOLUTION = 16384


class _LiveMapping(Mapping[str, Any]):
    def __init__(self, pick: str) -> None:
        self._pick = pick

    def _entries(self) -> dict[str, Any]:
        return {entry.name: entry for entry in _kernel().nodes}

    def __getitem__(self, name: str) -> Any:
        entry = _kernel().nodes.get(name)
        if entry is None:
            raise KeyError(name)
        return self._value(entry)

    def _value(self, entry: Any) -> Any:
        if self._pick == "cls":
            return entry.cls
        return entry.display_name or entry.name

    def __iter__(self) -> Iterator[str]:
        return iter(_kernel().nodes.names())

    def __len__(self) -> int:
        return len(_kernel().nodes)

    def __repr__(self) -> str:
        return f"<live {self._pick} view of {len(self)} nodes>"


NODE_CLASS_MAPPINGS: Mapping[str, type] = _LiveMapping("cls")
NODE_DISPLAY_NAME_MAPPINGS: Mapping[str, str] = _LiveMapping("display_name")


def __getattr__(name: str) -> Any:
    entry = _kernel().nodes.get(name)
    if entry is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    return entry.cls


def interrupt_processing(value: bool = True) -> None:
    if value and _kernel().executor is not None:
        _kernel().executor.interrupt()
