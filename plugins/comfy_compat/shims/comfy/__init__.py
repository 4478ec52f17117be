"""The ``comfy`` package node packs import; each module wraps the kernel or the core nodes.

In the reference, ``import comfy`` alone is enough to reach ``comfy.samplers`` or ``comfy.sd``:
the server imported those submodules at startup, which binds them on the package. Packs rely on
that (``import comfy`` then ``comfy.samplers.KSampler.SAMPLERS``), so here a submodule is
imported the first time it is read as an attribute of the package.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
