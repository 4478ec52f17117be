"""The assets plugin: a content-addressed store (blake3) of files with tags and user metadata.

Serves the ``/api/assets*`` and ``/api/tags`` family and announces ``{"assets": true}``. Records
live in ``<user dir>/comfykernel_assets.db``; the bytes stay where they are on disk (input,
output and model folders). A record names its content by ``blake3:<64 hex>``; many records may
share one content. Other code reaches the store through ``kernel.assets`` (an
``plugins.assets.api.AssetsAPI``), which is ``None`` when the plugin is disabled.
"""
