"""The core_nodes plugin's hooks: the core node set, ``/free`` and the torch device stats."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

from kernel import hookimpl
from kernel.events import PromptFinished
from plugins.core_nodes import memory, options, serving, system
from plugins.core_nodes.nodes import node_classes

if TYPE_CHECKING:
    from kernel import Kernel


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    options.add_options(parser)


@hookimpl
def register_nodes(register: Callable[..., None], kernel: Kernel) -> None:
    for name, (cls, display_name) in node_classes(kernel).items():
        register(name, cls, display_name=display_name)


@hookimpl(wrapper=True)
def wrap_node_execution(kernel: Kernel) -> Generator[None, Any, Any]:
    # The model-stack adapters find the server's model manager through this.
    with serving.serving(kernel):
        memory.before_node(kernel)  # /free work left marked while a prompt ran
        return (yield)


@hookimpl
def on_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
    memory.request_free(kernel, unload_models, free_memory)


@hookimpl
def on_event(kernel: Kernel, event: Any) -> None:
    if isinstance(event, PromptFinished):
        memory.between_prompts(kernel)


@hookimpl
def system_stats(kernel: Kernel) -> Mapping[str, Any] | None:
    return system.device_stats(force_cpu=kernel.settings.cpu)
