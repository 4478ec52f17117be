"""``comfy.k_diffusion.utils``: k-diffusion's tensor and dataset helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils import data


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """``x`` with singleton dimensions appended until it has ``target_dims`` dimensions."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FolderOfImages(data.Dataset):
    """Every image under ``root`` (recursively, sorted by path) as ``(transform(rgb_image),)``."""

    IMG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})

    def __init__(self, root: str | Path, transform: Any = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.transform = torch.nn.Identity() if transform is None else transform
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.IMG_EXTENSIONS)

    def __repr__(self) -> str:
        return f'FolderOfImages(root="{self.root}", len: {len(self)})'

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> tuple[Any]:
        with open(self.paths[key], "rb") as f:
            image = Image.open(f).convert("RGB")
        return (self.transform(image),)
