"""`comfy.hooks`: the reference's hook API (scheduled LoRA / model-as-LoRA weights and options a
conditioning or CLIP carries into sampling), as the core nodes implement it
(:mod:`plugins.core_nodes.hooks`): packs build, combine, schedule and attach the same objects the
server's sampler applies."""

from __future__ import annotations

from plugins.core_nodes.hooks import core as _core
from plugins.core_nodes.hooks.core import *  # noqa: F403 - the core module's public names are this API
from plugins.core_nodes.hooks.core import _HookRef

# The core module's names, plus the reference's private reference type that packs import by name.
__all__ = [*_core.__all__, "_HookRef"]
