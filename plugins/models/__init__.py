"""The models plugin: model-folder registry, listings, previews, embeddings and folder paths.

Other plugins use its public Python API through ``kernel.models`` (a ``plugins.models.api.ModelPaths``).
"""
