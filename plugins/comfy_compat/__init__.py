"""comfy_compat: ComfyUI custom-node packs load and run unchanged (see docs/node_packs.md)."""

from plugins.comfy_compat.torchvision_ops import install_torchvision_hook

# Every process that may load a pack imports this package before any pack, and packs import
# torchvision (directly or through transformers) at module top: make that import survive the CPU
# torch first (see torchvision_ops). The hook is lazy, so this costs nothing until then.
install_torchvision_hook()
