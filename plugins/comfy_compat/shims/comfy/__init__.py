"""The ``comfy`` package names node packs import; each module wraps the kernel or the core nodes."""
