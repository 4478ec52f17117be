"""`comfy.k_diffusion`: the reference's package of that name, for custom-node packs."""
