"""The attributes of a ``comfy_extras.nodes_*`` module: the kernel's registered classes of that module.

Each module names the classes the reference defines there (``_catalog``), under their node ids and
under the reference's Python class names (``nodes_post_processing.Blur`` is the node ImageBlur);
reading one gives the class the server runs under that node name (read at access time, so it is
always the running kernel's), the same object under both names. A class the server does not
register is missing, so ``from comfy_extras.nodes_x import Y`` fails with ImportError on that name
only, and ``NODE_CLASS_MAPPINGS`` lists only the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy_extras._catalog import CLASS_NAMES, MODULES
from comfykernel_compat_runtime import kernel as _kernel


def _registered(names: tuple[str, ...]) -> dict[str, Any]:
    nodes = _kernel().nodes
    found = {}
    for name in names:
        entry = nodes.get(name)
        if entry is not None:
            found[name] = entry
    return found


def module_attributes(
    module_name: str, helpers: dict[str, Any] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for the module ``module_name``; ``helpers`` are the module's
    own non-node names (defined in the module itself, so ``__getattr__`` never sees them)."""
    short = module_name.rpartition(".")[2]
    names = MODULES[short]
    aliases = CLASS_NAMES.get(short, {})
    own = sorted(helpers or ())

    def getattr_(name: str) -> Any:
        if name == "NODE_CLASS_MAPPINGS":
            return {n: e.cls for n, e in _registered(names).items()}
        if name == "NODE_DISPLAY_NAME_MAPPINGS":
            return {n: e.display_name or n for n, e in _registered(names).items()}
        node = name if name in names else aliases.get(name)
        if node is not None:
            entry = _kernel().nodes.get(node)
            if entry is not None:
                return entry.cls
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        registered = _registered(names)
        named = [alias for alias, node in aliases.items() if node in registered]
        return sorted(["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", *own, *registered, *named])

    return getattr_, dir_
