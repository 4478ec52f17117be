"""``node_helpers``: small helpers many packs import."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any


def conditioning_set_values(
    conditioning: list[Any], values: dict[str, Any] | None = None, append: bool = False
) -> list[Any]:
    """A copy of ``conditioning`` with ``values`` set (or appended to lists) in each entry's options."""
    out = []
    for tensor, options in conditioning:
        new = dict(options)
        for key, value in (values or {}).items():
            if append and key in new:
                new[key] = list(new[key]) + list(value)
            else:
                new[key] = value
        out.append([tensor, new])
    return out


def pillow(fn: Callable[..., Any], arg: Any) -> Any:
    """Call a PIL function, retrying once with truncated images allowed (as the reference does)."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        return fn(arg)
    except (OSError, SyntaxError):
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        return fn(arg)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    return hashlib.sha256


def string_to_torch_dtype(string: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination: Any, source: Any) -> tuple[Any, Any]:
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        import torch

        pad = destination.shape[-1] - source.shape[-1]
        source = torch.nn.functional.pad(source, (0, pad), value=1.0)
    return destination, source
