"""Hooks: LoRA / model-as-LoRA weights and options a conditioning (or CLIP) carries into sampling,
scheduled by keyframes over the sampling steps (the reference's ``comfy.hooks``).

:mod:`.core` holds the objects and the conditioning helpers, :mod:`.state` a MODEL's hook state
(what ``ModelPatcher``'s hook methods do), :mod:`.sampling` the guider's and ``calc_cond_batch``'s
steps, :mod:`.lora_patches` how a hook's LoRA becomes weight patches.
"""

from plugins.core_nodes.hooks.core import *  # noqa: F403
from plugins.core_nodes.hooks.core import __all__ as _core_all

__all__ = list(_core_all)
