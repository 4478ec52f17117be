"""``comfy_extras.nodes_hooks``: the reference's hook node classes, as the kernel registered them
(:mod:`plugins.core_nodes.nodes.hooks`), under their node names and under the reference's Python
class names where those differ (``CombineHooks`` is CombineHooks2...: the compat table of the
reference's classes names them). Each class carries the reference's ``NodeId`` / ``NodeName``;
AnimateDiff-Evolved subclasses ``CreateHookModelAsLora`` and calls ``SetClipHooks.apply_hooks``."""

from comfy_extras._exports import module_attributes

__getattr__, __dir__ = module_attributes(__name__)
