"""``comfy_api.latest``: ``io``, ``ui``, ``ComfyExtension``, ``ComfyAPI`` and ``ComfyAPISync``."""

from comfy_api.latest import io, ui
from comfy_api.v0_0_2 import ComfyAPI, ComfyAPISync

from kernel.nodes.v3 import ComfyExtension

__all__ = ["ComfyAPI", "ComfyAPISync", "ComfyExtension", "io", "ui"]
