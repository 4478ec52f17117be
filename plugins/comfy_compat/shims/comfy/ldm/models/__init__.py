"""`comfy.ldm.models`: the reference's package of that name, for custom-node packs."""
