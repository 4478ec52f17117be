"""``comfy.conds``: the wrappers a processed cond dict's ``model_conds`` hold.

They are the core sampler's own (:mod:`plugins.core_nodes.conds`), so what a pack builds in an
``extra_conds`` override (IC-Light's ``CONDNoiseShape(concat_latent)``, AnimateDiff's
``CONDNoiseShape``) is batched, cut to areas and concatenated exactly as the server's conds are.
"""

from __future__ import annotations

from plugins.core_nodes.conds import (
    CONDConstant,
    CONDCrossAttn,
    CONDList,
    CONDNoiseShape,
    CONDRegular,
    is_equal,
)

__all__ = ["CONDConstant", "CONDCrossAttn", "CONDList", "CONDNoiseShape", "CONDRegular", "is_equal"]
