"""`comfy.ldm`: the reference's package of that name, for custom-node packs."""

from comfy import submodule_getattr

# ``comfy.ldm.models.autoencoder`` reachable after ``import comfy``, as in the reference.
__getattr__ = submodule_getattr(__name__)
