"""``python -m comfykernel``: start the server with ComfyUI's ``main.py`` command line."""
