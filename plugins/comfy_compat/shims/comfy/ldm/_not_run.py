"""The model classes of families comfykernel does not run (Cosmos, LTX-Video...).

Packs import these modules at load time, subclass the classes or test ``isinstance`` against
them; only building a whole model needs the architecture. :class:`NotRunModel` keeps the
reference's class names and ``nn.Module`` base (so ``isinstance`` is False for every model this
server loads) while building one raises a clear error instead of a half-built network.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class ModelFamilyNotRun(NotImplementedError):
    """Raised when a pack builds a model of a family this server does not run."""


class NotRunModel(nn.Module):
    """Base of a whole-model class of a family comfykernel does not run; ``FAMILY`` names it."""

    FAMILY: ClassVar[str] = "this"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ModelFamilyNotRun(
            f"comfykernel does not run {self.FAMILY} models ({type(self).__name__} cannot be built); "
            "see docs/node_packs.md"
        )
