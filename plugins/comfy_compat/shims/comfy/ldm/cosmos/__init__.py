"""`comfy.ldm.cosmos`: the reference's package of that name (NVIDIA Cosmos models), for custom-node packs.

comfykernel does not run Cosmos models; see ``docs/node_packs.md``.
"""
