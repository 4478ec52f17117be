"""``comfy_extras.nodes_perpneg``: the Perp-Neg guidance helpers packs subclass or call.

``perp_neg`` and ``Guider_PerpNeg`` are the core node family's (Inspire-Pack subclasses the
guider); the node classes of the reference module come from the kernel's registry.
"""

from __future__ import annotations

from comfy_extras._exports import module_attributes

from plugins.core_nodes.patches.perp_neg import PerpNegGuider as Guider_PerpNeg
from plugins.core_nodes.patches.perp_neg import perp_neg

__getattr__, __dir__ = module_attributes(__name__, {"perp_neg": perp_neg, "Guider_PerpNeg": Guider_PerpNeg})
