"""`comfy.ldm.lightricks.vae`: the reference's package of that name (LTX-Video VAEs), for custom-node packs."""
