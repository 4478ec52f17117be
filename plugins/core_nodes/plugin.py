"""The core_nodes plugin's hooks: the core node set, ``/free`` and the torch device stats."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from plugins.core_nodes import memory, system
from plugins.core_nodes.nodes import node_classes

if TYPE_CHECKING:
    from kernel import Kernel


@hookimpl
def register_nodes(register: Callable[..., None], kernel: Kernel) -> None:
    for name, (cls, display_name) in node_classes(kernel).items():
        register(name, cls, display_name=display_name)


@hookimpl
def on_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
    memory.request_free(kernel, unload_models, free_memory)


@hookimpl
def system_stats(kernel: Kernel) -> Mapping[str, Any] | None:
    return system.device_stats()
