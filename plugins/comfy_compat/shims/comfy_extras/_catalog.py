"""Which node classes each of the reference's ``comfy_extras.nodes_*`` modules defines.

Read from the compat plugin's table of the reference's classes
(:mod:`plugins.comfy_compat.reference_table`, generated from the reference's source), which also
covers the modules packs import whose classes this server has none of. ``comfy_extras._exports``
serves them from the kernel's registry.
"""

from __future__ import annotations

from plugins.comfy_compat.reference_table import module_classes, reference_modules

_PREFIX = "comfy_extras."

# Module (``nodes_mask``) -> the node ids its classes register, in the table's order.
MODULES: dict[str, tuple[str, ...]] = {
    name[len(_PREFIX) :]: tuple(dict.fromkeys(row.node_id for row in module_classes(name)))
    for name in reference_modules()
    if name.startswith(_PREFIX)
}

# Module -> the reference's Python class name -> the node id it registers, for the classes whose
# name is not a node id of the module (``nodes_post_processing.Blur`` is the node ImageBlur).
CLASS_NAMES: dict[str, dict[str, str]] = {
    module: {
        row.class_name: row.node_id
        for row in module_classes(_PREFIX + module)
        if row.class_name not in MODULES[module]
    }
    for module in MODULES
}
