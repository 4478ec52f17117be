"""load_clip's cache: a set of text-encoder files is one cached CLIP whatever slots they came in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.manager import get_manager
from plugins.core_nodes.serving import serving

from . import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sdxl_pair(folder: Path) -> tuple[Path, Path]:
    """The tiny SDXL checkpoint's CLIP-L (transformers layout) and OpenCLIP-G as two files."""
    sd = tiny_pipeline.checkpoint_dict("sdxl", 0)
    parts = {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."}
    paths = []
    for name, prefix in parts.items():
        path = folder / f"{name}.safetensors"
        save_file({k[len(prefix) :]: v.contiguous() for k, v in sd.items() if k.startswith(prefix)}, str(path))
        paths.append(path)
    return paths[0], paths[1]


def test_dual_clip_pair_in_either_order_is_loaded_once(tmp_path: Path, make_kernel: Any) -> None:
    kernel = make_kernel(cpu=True)
    clip_l, clip_g = _sdxl_pair(tmp_path)
    with serving(kernel):
        first = adapters.load_clip([clip_g, clip_l], "sdxl")
        second = adapters.load_clip([clip_l, clip_g], "sdxl")
    assert len(get_manager(kernel).loaded()) == 1
    for name in ("l", "g"):
        assert first.stack.encoders[name].model is second.stack.encoders[name].model
    cond_a, pooled_a = first.encode("a red cube")
    cond_b, pooled_b = second.encode("a red cube")
    assert cond_a.equal(cond_b) and pooled_a.equal(pooled_b)
