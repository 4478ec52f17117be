"""``comfy_api.latest.ui``: UI results a V3 node returns in ``NodeOutput(ui=...)``."""

from __future__ import annotations

import os
import uuid
from typing import Any

from comfykernel_compat_runtime import kernel as _kernel


class _UIOutput:
    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class SavedResult(dict):  # type: ignore[type-arg]
    """One file the UI can fetch through ``/view``."""

    def __init__(self, filename: str, subfolder: str, type: str) -> None:  # noqa: A002
        super().__init__(filename=filename, subfolder=subfolder, type=type)


class SavedImages(_UIOutput):
    def __init__(self, results: list[SavedResult], is_animated: bool = False) -> None:
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"images": [dict(r) for r in self.results]}
        if self.is_animated:
            data["animated"] = (True,)
        return data


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}


class PreviewImage(_UIOutput):
    """Writes ``[B, H, W, C]`` float images to the temp folder as PNGs and shows them."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        import numpy as np
        from PIL import Image

        temp = str(_kernel().settings.temp_path)
        os.makedirs(temp, exist_ok=True)
        results = []
        stem = f"ComfyUI_temp_{uuid.uuid4().hex[:5]}"
        for index, frame in enumerate(image):
            array = np.clip(frame.detach().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
            name = f"{stem}_{index:05}_.png"
            Image.fromarray(array).save(os.path.join(temp, name))
            results.append(SavedResult(name, "", "temp"))
        self.values = SavedImages(results, animated)

    def as_dict(self) -> dict[str, Any]:
        return self.values.as_dict()


class PreviewMask(PreviewImage):
    """A ``[B, H, W]`` (or ``[H, W]``) mask shown as a grey image."""

    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(grey, animated, cls, **kwargs)


__all__ = ["PreviewImage", "PreviewMask", "PreviewText", "SavedImages", "SavedResult"]
