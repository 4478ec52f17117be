"""``comfy.samplers.get_area_and_mult`` / ``process_conds`` on the reference's cond dicts.

ComfyUI_smZNodes wraps ``get_area_and_mult`` (and reads the original at import);
comfyui-tooling-nodes calls ``process_conds`` for regional prompts. They are the core
sampler's own functions. Expected values are worked out by hand from the reference's rules.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from plugins.core_nodes.sampling.schedules import ModelSamplingDiscrete
from tests.compat.helpers import PACKS


@pytest.fixture
async def samplers(comfy_server: Any) -> Any:
    await comfy_server(plugins=["comfy_compat", "models", "core_nodes"], custom_nodes_dir=[str(PACKS)])
    return importlib.import_module("comfy.samplers")


async def test_get_area_and_mult_crops_weights_and_fades_inner_borders(samplers: Any) -> None:
    conds = importlib.import_module("comfy.conds")
    text = torch.randn(1, 77, 8)
    cond = {
        "area": [8, 8, 0, 8],  # h, w, y, x: the top-right quarter of a 16x16 latent
        "strength": 2.0,
        "model_conds": {"c_crossattn": conds.CONDCrossAttn(text)},
        "uuid": "u1",
    }
    x = torch.arange(2 * 4 * 16 * 16, dtype=torch.float32).reshape(2, 4, 16, 16)
    out = samplers.get_area_and_mult(cond, x, torch.tensor([3.0]))
    assert torch.equal(out.input_x, x[:, :, 0:8, 8:16])
    assert out.area == [8, 8, 0, 8] and out.uuid == "u1" and out.control is None
    # The left and bottom borders lie inside the latent: they fade over min(8, 8 // 4) = 2 pixels
    # (factors 1/2 then 1); the top and right borders are the latent's own edges.
    mult = out.mult[0, 0]
    assert mult[3, 3] == 2.0 and mult[0, 5] == 2.0
    assert mult[3, 0] == 1.0 and mult[7, 3] == 1.0 and mult[7, 0] == 0.5 and mult[6, 1] == 2.0
    assert out.conditioning["c_crossattn"].cond.shape[0] == 2
    # Outside the cond's sigma range nothing applies.
    ranged = dict(cond, timestep_start=2.0, timestep_end=1.0)
    assert samplers.get_area_and_mult(ranged, x, torch.tensor([3.0])) is None
    assert samplers.get_area_and_mult(ranged, x, torch.tensor([0.5])) is None
    assert samplers.get_area_and_mult(ranged, x, torch.tensor([1.5])) is not None


async def test_get_area_and_mult_with_a_mask(samplers: Any) -> None:
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 4:8] = 1.0
    cond = {"mask": mask, "mask_strength": 0.5, "strength": 3.0, "model_conds": {}}
    x = torch.zeros(2, 4, 16, 16)
    out = samplers.get_area_and_mult(cond, x, torch.tensor([1.0]))
    assert out.mult.shape == (2, 4, 16, 16)
    assert out.mult[1, 2, 5, 5] == 1.5 and out.mult[0, 0, 0, 0] == 0.0


async def test_process_conds_resolves_areas_masks_ranges_and_model_conds(samplers: Any) -> None:
    sampling = ModelSamplingDiscrete()
    model = SimpleNamespace(model_sampling=sampling)
    text = torch.randn(1, 77, 8)
    given = {
        "positive": [
            {
                "cross_attn": text,
                "area": ("percentage", 0.5, 0.25, 0.5, 0.0),
                "mask": torch.ones(1, 32, 32),
                "start_percent": 0.25,
                "end_percent": 0.75,
                "model_conds": {},
            }
        ]
    }
    entry = given["positive"][0]
    out = samplers.process_conds(model, torch.zeros(1, 4, 16, 16), given, "cpu")
    [cond] = out["positive"]
    assert tuple(cond["area"]) == (8, 4, 8, 0)
    assert cond["mask"].shape == (1, 16, 16)
    assert cond["timestep_start"] == sampling.percent_to_sigma(0.25)
    assert cond["timestep_end"] == sampling.percent_to_sigma(0.75)
    assert torch.equal(cond["model_conds"]["c_crossattn"].cond, text)
    # The caller's cond dicts are left alone (as in the reference, the lists are replaced).
    assert "timestep_start" not in entry and "model_conds" in entry and not entry["model_conds"]


async def test_v3_combo_output_with_options_is_typed_by_its_choices(samplers: Any) -> None:
    """comfyui-tooling-nodes declares ``io.Combo.Output(display_name=..., options=KSampler.SAMPLERS)``."""
    import enum

    io = importlib.import_module("comfy_api.latest.io")
    spec = io.Combo.Output(display_name="sampler name", options=samplers.KSampler.SAMPLERS)
    assert spec.io_type == list(samplers.KSampler.SAMPLERS) and spec.display_name == "sampler name"

    class Mode(enum.Enum):
        A = "a"
        B = "b"

    assert io.Combo.Output("mode", options=Mode).io_type == ["a", "b"]
    assert io.Combo.Output("plain").io_type == "COMBO"
