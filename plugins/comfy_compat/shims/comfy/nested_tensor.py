"""``comfy.nested_tensor``: a list of tensors that acts as one (the reference's audio+video latents).

ComfyUI-LTXVideo imports ``NestedTensor`` to build and take apart LTX-2 audio-video latents.
Arithmetic, indexing, ``to`` and ``chunk`` apply to each member; ``shape`` / ``dtype`` /
``device`` are the first member's, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


class NestedTensor:
    """Tensors of different shapes carried together; elementwise operations map over them."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.is_nested = True

    def _copy(self) -> NestedTensor:
        return NestedTensor(self.tensors)

    def apply_operation(self, other: Any, operation: Callable[[Any, Any], Any]) -> NestedTensor:
        """``operation(member, other)`` per member; a NestedTensor ``other`` pairs member with member."""
        if isinstance(other, NestedTensor):
            return NestedTensor(operation(t, o) for t, o in zip(self.tensors, other.tensors, strict=False))
        return NestedTensor(operation(t, other) for t in self.tensors)

    def __add__(self, other: Any) -> NestedTensor:
        return self.apply_operation(other, lambda x, y: x + y)

    def __sub__(self, other: Any) -> NestedTensor:
        return self.apply_operation(other, lambda x, y: x - y)

    def __mul__(self, other: Any) -> NestedTensor:
        return self.apply_operation(other, lambda x, y: x * y)

    def __truediv__(self, other: Any) -> NestedTensor:
        return self.apply_operation(other, lambda x, y: x / y)

    def __getitem__(self, index: Any) -> NestedTensor:
        return self.apply_operation(None, lambda x, _: x[index])

    def unbind(self) -> list[torch.Tensor]:
        return self.tensors

    def to(self, *args: Any, **kwargs: Any) -> NestedTensor:
        return NestedTensor(t.to(*args, **kwargs) for t in self.tensors)

    def new_ones(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.tensors[0].new_ones(*args, **kwargs)

    def float(self) -> NestedTensor:
        return self.to(dtype=torch.float)

    def chunk(self, *args: Any, **kwargs: Any) -> NestedTensor:
        return self.apply_operation(None, lambda x, _: x.chunk(*args, **kwargs))

    def size(self) -> torch.Size:
        return self.tensors[0].size()

    @property
    def shape(self) -> torch.Size:
        return self.tensors[0].shape

    @property
    def ndim(self) -> int:
        return max((t.ndim for t in self.tensors), default=0)

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[0].dtype

    @property
    def layout(self) -> torch.layout:
        return self.tensors[0].layout


def cat_nested(tensors: Sequence[NestedTensor], *args: Any, **kwargs: Any) -> NestedTensor:
    """Member ``i`` of the result is ``torch.cat`` of member ``i`` of each of ``tensors``."""
    count = len(tensors[0].tensors)
    return NestedTensor(torch.cat([n.tensors[i] for n in tensors], *args, **kwargs) for i in range(count))
