"""``comfy.samplers``: the sampler and scheduler names of the core ``KSampler`` node.

Packs use ``comfy.samplers.KSampler.SAMPLERS`` / ``.SCHEDULERS`` to build their combos; the lists
are read from the registered KSampler node so they always match what the core nodes accept.
"""

from __future__ import annotations

from typing import Any

from comfykernel_compat_runtime import kernel as _kernel


def _choices(input_name: str) -> list[str]:
    entry = _kernel().nodes.get("KSampler")
    if entry is None:
        return []
    spec = entry.cls.INPUT_TYPES()["required"].get(input_name)
    return list(spec[0]) if spec and isinstance(spec[0], list | tuple) else []


class _Names:
    def __init__(self, input_name: str) -> None:
        self.input_name = input_name

    def __get__(self, obj: Any, owner: type) -> list[str]:
        return _choices(self.input_name)


class KSampler:
    SAMPLERS = _Names("sampler_name")
    SCHEDULERS = _Names("scheduler")


def __getattr__(name: str) -> Any:
    if name == "SAMPLER_NAMES":
        return _choices("sampler_name")
    if name in ("SCHEDULER_NAMES", "SCHEDULER_HANDLERS"):
        return _choices("scheduler")
    raise AttributeError(f"module 'comfy.samplers' has no attribute {name!r}")
