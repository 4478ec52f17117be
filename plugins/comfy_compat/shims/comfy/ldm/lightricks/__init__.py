"""`comfy.ldm.lightricks`: the reference's package of that name (LTX-Video models), for custom-node packs.

comfykernel does not run LTX-Video models; see ``docs/node_packs.md``.
"""
