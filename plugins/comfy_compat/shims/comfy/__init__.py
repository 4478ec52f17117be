"""The ``comfy`` package node packs import; each module wraps the kernel or the core nodes.

In the reference, ``import comfy`` alone is enough to reach ``comfy.samplers`` or
``comfy.ldm.models.autoencoder``: the server imported those modules at startup, which binds them
on their packages. Packs rely on that (``import comfy`` then ``comfy.samplers.KSampler.SAMPLERS``),
so here a submodule is imported the first time it is read as an attribute of its package; the
subpackages use the same rule through :func:`submodule_getattr`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType


def submodule_getattr(package: str) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<name>`` on first access."""

    def getattr_(name: str) -> ModuleType:
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_


__getattr__ = submodule_getattr(__name__)
