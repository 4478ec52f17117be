// Served from nodes.EXTENSION_WEB_DIRS["surface_extra_web"] (surface_pack).
