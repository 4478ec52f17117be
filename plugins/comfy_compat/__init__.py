"""comfy_compat: ComfyUI custom-node packs load and run unchanged (see docs/node_packs.md)."""
