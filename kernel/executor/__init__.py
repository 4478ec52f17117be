"""The execution engine: prompt validation (``validation``), graph order, caches and node calls.

Kept import-light: modules that compute import what they need themselves, so importing
``kernel.executor.validation`` for ``POST /prompt`` never pulls in torch.
"""
