"""The sampler's conds are the reference's processed cond dicts (packs read and copy them)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from plugins.core_nodes.conds import CONDCrossAttn
from plugins.core_nodes.cond_prep import convert_cond, process_conds
from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete


def test_processed_conds_are_dicts_of_the_options_and_the_placed_values() -> None:
    sampling = ModelSamplingDiscrete()
    text = torch.randn(1, 77, 8)
    options = {"weight": 0.5, "strength": 2.0, "start_percent": 0.25, "area": (8, 8, 0, 8), "my_key": "x"}
    given = {"positive": convert_cond([[text, options]])}
    model = SimpleNamespace(model_sampling=sampling)
    [cond] = process_conds(model, torch.zeros(1, 4, 16, 16), given, "cpu")["positive"]
    # ComfyUI_smZNodes' sampling_function reads cond.get("weight") on every entry;
    # AnimateDiff-Evolved copies each dict per context window.
    assert type(cond) is dict and cond.copy() == cond
    assert cond["weight"] == 0.5 and cond["strength"] == 2.0 and cond["my_key"] == "x"
    assert tuple(cond["area"]) == (8, 8, 0, 8)
    assert cond["timestep_start"] == sampling.percent_to_sigma(0.25)
    assert torch.equal(cond["cross_attn"], text)
    c_crossattn = cond["model_conds"]["c_crossattn"]
    assert isinstance(c_crossattn, CONDCrossAttn) and torch.equal(c_crossattn.cond, text)
    assert "uuid" in cond and "control" not in cond and "mask" not in cond
    assert "timestep_start" not in options  # the CONDITIONING's own options are left alone


def test_model_config_classes_carry_the_reference_family_names() -> None:
    """ComfyUI-IC-Light refuses a MODEL whose config class name lacks "SD15"."""
    from plugins.core_nodes.models import model_base

    names = {family: cls.__name__ for family, cls in model_base.CONFIG_CLASSES.items()}
    assert names == {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "sdxl_refiner": "SDXLRefiner"}
    assert all(issubclass(cls, model_base.ModelConfig) for cls in model_base.CONFIG_CLASSES.values())
