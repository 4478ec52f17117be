"""`comfy.ldm.models`: the reference's package of that name, for custom-node packs.

``autoencoder`` is imported with the package: in the reference it is always loaded (by
``comfy.sd``) before packs run, and packs reach ``comfy.ldm.models.autoencoder`` as an attribute
without importing it.
"""

from comfy.ldm.models import autoencoder as autoencoder
