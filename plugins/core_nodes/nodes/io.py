"""Image files: SaveImage, PreviewImage, LoadImage, LoadImageMask.

Every name from a prompt goes through ``kernel.paths`` so nothing is read or written outside the
input / output / temp roots.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from kernel.paths import UnsafePath, resolve_annotated, safe_join, type_root
from plugins.core_nodes.nodes.common import KernelNode

_COUNTER = re.compile(r"^(\d+)")
_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"


class UnsafeOutputPath(ValueError):
    """A ``filename_prefix`` that would leave the output folder."""


def _substitute(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}",
        "%day%": f"{now.tm_mday:02d}",
        "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}",
        "%second%": f"{now.tm_sec:02d}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


def save_path(root: Path, filename_prefix: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, file stem, next counter, subfolder) for ``filename_prefix`` under ``root``.

    The counter is one more than the highest ``<stem>_<digits>`` already in the folder, so files
    are never overwritten and numbering continues across restarts.
    """
    prefix = _substitute(filename_prefix, width, height).replace("\\", "/")
    subfolder, _, filename = prefix.rpartition("/")
    try:
        folder = safe_join(root, subfolder, allow_root=True)
    except UnsafePath as exc:
        raise UnsafeOutputPath(
            f"Saving image outside the output folder is not allowed. filename_prefix: {filename_prefix!r} "
            f"({exc.reason})"
        ) from None
    if filename and (filename in (".", "..") or "\x00" in filename):
        raise UnsafeOutputPath(f"invalid filename_prefix {filename_prefix!r}")
    counter = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    stem = os.path.normcase(filename)
    for name in names:
        base = os.path.normcase(os.path.splitext(name)[0])
        if not base.startswith(stem + "_"):
            continue
        match = _COUNTER.match(base[len(stem) + 1 :])
        if match:
            counter = max(counter, int(match.group(1)))
    return folder, filename, counter + 1, subfolder


def png_info(prompt: Any, extra_pnginfo: Any, disabled: bool) -> Any:
    """The PNG text chunks: ``prompt`` and each ``extra_pnginfo`` key (``workflow``), as JSON."""
    if disabled:
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            info.add_text(str(key), json.dumps(value))
    return info


def to_pil(image: Any) -> Any:
    import numpy as np
    from PIL import Image

    array = np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


class SaveImage(KernelNode):
    # The images pass through (as in the reference since v0.27), so a graph can go on after a save.
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your output directory."

    file_type = "output"
    prefix_append = ""
    compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(
        self, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None, extra_pnginfo: Any = None
    ) -> dict[str, Any]:
        kernel = self.kernel()
        root = type_root(kernel, self.file_type)
        prefix = filename_prefix + self.prefix_append
        folder, filename, counter, subfolder = save_path(root, prefix, images.shape[2], images.shape[1])
        folder.mkdir(parents=True, exist_ok=True)
        metadata = png_info(prompt, extra_pnginfo, kernel.settings.disable_metadata)
        results = []
        for batch_number, image in enumerate(images):
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            target = safe_join(folder, name)
            to_pil(image).save(target, pnginfo=metadata, compress_level=self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.file_type})
            counter += 1
        return {"ui": {"images": results}, "result": (images,)}


class PreviewImage(SaveImage):
    file_type = "temp"
    compress_level = 1

    def __init__(self) -> None:
        self.prefix_append = "_temp_" + "".join(random.choice(_TEMP_LETTERS) for _ in range(5))

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }


def _input_images(root: Path) -> list[str]:
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    names = []
    for name in entries:
        if name.startswith(".") or not (root / name).is_file():
            continue
        kind = mimetypes.guess_type(name)[0] or ""
        if kind.startswith("image/"):
            names.append(name)
    return sorted(names)


def _resolve_input(kernel: Any, image: str) -> Path | None:
    try:
        path, _ = resolve_annotated(kernel, image, "input")
    except (UnsafePath, ValueError):
        return None
    return path if path.is_file() else None


class _Loader(KernelNode):
    @classmethod
    def IS_CHANGED(cls, image: str, **_: Any) -> str:  # noqa: N802 - the reference's hook name
        path = _resolve_input(cls.kernel(), image)
        if path is None:
            return ""
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:  # noqa: N802 - the reference's hook name
        if _resolve_input(cls.kernel(), image) is None:
            return f"Invalid image file: {image}"
        return True

    def _open(self, image: str) -> Any:
        from PIL import Image

        path = _resolve_input(self.kernel(), image)
        if path is None:
            raise FileNotFoundError(f"Invalid image file: {image}")
        return Image.open(path)


def load_frames(img: Any) -> tuple[Any, Any]:
    """(IMAGE [B, H, W, 3], MASK [B, H, W]) from every same-sized frame; mask = 1 - alpha."""
    import numpy as np
    import torch
    from PIL import ImageOps, ImageSequence

    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame) or frame
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
        if "A" in frame.getbands():
            alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        else:
            masks.append(torch.zeros((64, 64), dtype=torch.float32))
        if img.format == "MPO":
            break  # MPO files hold alternative views of one picture, not a sequence
    if len({tuple(m.shape) for m in masks}) > 1:
        masks = [m if m.shape == images[0].shape[:2] else torch.zeros(images[0].shape[:2]) for m in masks]
    return torch.stack(images), torch.stack(masks)


class LoadImage(_Loader):
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        root = type_root(cls.kernel(), "input") if cls.KERNEL is not None else None
        files = _input_images(root) if root is not None else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image: str) -> tuple[Any, Any]:
        with self._open(image) as img:
            return load_frames(img)


class LoadImageMask(_Loader):
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        root = type_root(cls.kernel(), "input") if cls.KERNEL is not None else None
        files = _input_images(root) if root is not None else []
        return {
            "required": {
                "image": (files, {"image_upload": True}),
                "channel": (["alpha", "red", "green", "blue"],),
            }
        }

    def load_image(self, image: str, channel: str) -> tuple[Any]:
        import numpy as np
        import torch
        from PIL import ImageOps

        with self._open(image) as img:
            frame = ImageOps.exif_transpose(img) or img
            if frame.getbands() != ("R", "G", "B", "A"):
                if frame.mode == "I":
                    frame = frame.point(lambda v: v * (1 / 255))
                frame = frame.convert("RGBA")
            band = channel[0].upper()
            values = np.asarray(frame.getchannel(band), dtype=np.float32) / 255.0
        mask = torch.from_numpy(values)
        if band == "A":
            mask = 1.0 - mask
        return (mask.unsqueeze(0),)


class LoadImageOutput(LoadImage):
    """LoadImage for pictures this server made: the frontend lists the output folder through
    ``/internal/files/output`` and sends names annotated `` [output]``. Names resolve as
    LoadImage's do (an unannotated name is looked up in the input folder, as in the reference)."""

    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        remote = {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"}
        return {"required": {"image": ("COMBO", {"image_upload": True, "image_folder": "output", "remote": remote})}}


NODES: dict[str, tuple[type, str | None]] = {
    "SaveImage": (SaveImage, "Save Image"),
    "PreviewImage": (PreviewImage, "Preview Image"),
    "LoadImage": (LoadImage, "Load Image"),
    "LoadImageMask": (LoadImageMask, "Load Image (as Mask)"),
    "LoadImageOutput": (LoadImageOutput, "Load Image (from Outputs)"),
}
