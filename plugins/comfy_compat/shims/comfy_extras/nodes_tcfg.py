"""``comfy_extras.nodes_tcfg``: the reference's classes of this module, as the kernel registered them."""

from comfy_extras._exports import module_attributes

__getattr__, __dir__ = module_attributes(__name__)
