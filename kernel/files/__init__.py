"""The input/output/temp file routes of the essential ``files`` plugin.

``dirs`` prepares the three roots, ``upload`` and ``view`` serve the image routes, ``images``
holds the Pillow work, ``metadata`` reads safetensors headers and ``listing`` lists a root.
Every client-supplied name goes through ``kernel.paths``.
"""
