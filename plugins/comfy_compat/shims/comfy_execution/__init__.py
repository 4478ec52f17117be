"""``comfy_execution``: the graph helpers node packs use for expansion and blocking."""
