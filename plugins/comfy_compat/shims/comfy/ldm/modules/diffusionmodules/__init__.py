"""`comfy.ldm.modules.diffusionmodules`: the reference's package of that name, for custom-node packs."""
