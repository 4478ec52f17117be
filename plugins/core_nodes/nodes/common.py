"""Pieces every node family shares: limits, the kernel binding and the core-module marker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from kernel import Kernel

# The reference's MAX_RESOLUTION: the largest width/height any core node accepts.
MAX_RESOLUTION = 16384
# The reference's largest seed (an unsigned 64-bit integer).
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class CoreNode:
    """Base of every core node. ``python_module`` says "nodes" like the reference's built-ins,
    so the frontend treats them as core nodes rather than a custom pack."""

    RELATIVE_PYTHON_MODULE: ClassVar[str] = "nodes"


class ClassExecute:
    """Mixin: the reference's newer entry point on a classic node. ``Node.execute(...)`` on the
    class runs the node's ``FUNCTION`` on a new instance, as packs call the reference's schema
    nodes. Not for nodes whose ``FUNCTION`` is ``execute`` itself."""

    FUNCTION: ClassVar[str]

    @classmethod
    def execute(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(cls(), cls.FUNCTION)(*args, **kwargs)


class KernelNode(CoreNode):
    """A node that needs its server (directories, settings, model folders).

    The registered class is a per-kernel subclass made by :func:`bind`, so two servers in one
    process never share state and nothing module-level is mutated.
    """

    KERNEL: ClassVar[Kernel | None] = None

    @classmethod
    def kernel(cls) -> Kernel:
        if cls.KERNEL is None:
            raise RuntimeError(f"{cls.__name__} is not bound to a server")
        return cls.KERNEL


def bind(cls: type[Any], kernel: Kernel) -> type[Any]:
    """A subclass of ``cls`` that knows ``kernel`` (same name and module, for error messages)."""
    return type(cls.__name__, (cls,), {"KERNEL": kernel, "__module__": cls.__module__})
