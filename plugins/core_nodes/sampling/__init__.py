"""The sampling core of the Stable Diffusion stack: seeded noise, sigma schedules, samplers.

Pure torch. The server imports these modules lazily (only when a graph samples), so importing
``plugins.core_nodes`` never pulls in torch.
"""
