"""ComfyUI's ``comfyui_version``: the reference release whose API this server speaks."""

from kernel.version import COMFYUI_API_VERSION

__version__: str = COMFYUI_API_VERSION
