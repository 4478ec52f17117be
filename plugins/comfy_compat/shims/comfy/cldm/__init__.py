"""`comfy.cldm`: the reference's ControlNet network package, for custom-node packs."""
