"""Functions the ComfyUI compatibility layer lets custom-node packs replace.

Packs monkey-patch reference module attributes (``comfy.samplers.sampling_function = mine``,
``comfy.k_diffusion.sampling.default_noise_sampler = mine`` ...) and expect the server to call
their version from then on. The core nodes never import those compatibility modules; they ask
here, at call time, whether the module is loaded and what the attribute holds now, and fall
back to their own function when it is not (the compat plugin disabled, or the attribute gone).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def lookup(module: str, name: str, default: F) -> F:
    """``module.name`` as it is now when ``module`` is imported, else ``default``."""
    loaded = sys.modules.get(module)
    if loaded is None:
        return default
    found = getattr(loaded, name, None)
    return found if callable(found) else default


__all__ = ["lookup"]
