"""The ``frontend_ext`` plugin: the official web UI and the routes it reads besides the core API.

Serves ``comfyui-frontend-package`` (or ``--front-end-root DIR``) at ``/``, the extension list and
pack web directories, translations, workflow templates, embedded node docs, subgraph blueprints,
node replacements and the server log ring buffer (``/internal/logs*``). Node packs reach it
through ``register_web_extensions``, ``register_translations``, ``register_node_pack_dirs`` and
``register_node_replacements``. Disable it (``--disable frontend_ext``) for a headless API server.
"""
