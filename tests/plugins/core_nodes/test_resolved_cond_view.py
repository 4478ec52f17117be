"""Resolved conds answer dict reads as the reference's cond dicts do (packs' sampling wrappers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from plugins.core_nodes.guidance import resolve
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete


def test_reads_see_the_options_and_the_placed_values() -> None:
    sampling = ModelSamplingDiscrete()
    text = torch.randn(1, 77, 8)
    options = {"weight": 0.5, "strength": 2.0, "start_percent": 0.25, "area": (8, 8, 0, 8), "my_key": "x"}
    [cond] = resolve([[text, options]], torch.zeros(1, 4, 16, 16), SimpleNamespace(model_sampling=sampling))
    # ComfyUI_smZNodes' sampling_function reads cond.get("weight") on every entry.
    assert cond.get("weight") == 0.5 and cond.get("absent") is None and cond.get("absent", 3) == 3
    assert cond["strength"] == 2.0 and cond["area"] == [8, 8, 0, 8] and cond["my_key"] == "x"
    assert cond["timestep_start"] == sampling.percent_to_sigma(0.25)
    assert torch.equal(cond["cross_attn"], text) and torch.equal(cond["model_conds"]["c_crossattn"], text)
    assert "uuid" in cond and "control" not in cond and "mask" not in cond
    assert {"cross_attn", "strength", "weight"} <= set(cond.keys())
    with pytest.raises(KeyError):
        cond["absent"]


def test_model_config_classes_carry_the_reference_family_names() -> None:
    """ComfyUI-IC-Light refuses a MODEL whose config class name lacks "SD15"."""
    from plugins.core_nodes.models import model_base

    names = {family: cls.__name__ for family, cls in model_base.CONFIG_CLASSES.items()}
    assert names == {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "sdxl_refiner": "SDXLRefiner"}
    assert all(issubclass(cls, model_base.ModelConfig) for cls in model_base.CONFIG_CLASSES.values())
