"""Bundled comfykernel plugins; each subpackage is one plugin (see its plugin.py)."""
