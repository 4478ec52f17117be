"""The compatibility modules answer for the running kernel (called the way packs call them)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.compat.helpers import PACKS


@pytest.fixture
async def shims(comfy_server):
    server = await comfy_server(
        plugins=["comfy_compat", "models", "core_nodes"], custom_nodes_dir=[str(PACKS)]
    )
    return server


async def test_folder_paths_directories_and_save_path(shims, tmp_path: Path):
    fp = importlib.import_module("folder_paths")
    settings = shims.kernel.settings
    assert fp.output_directory == str(settings.output_path)
    assert fp.get_input_directory() == str(settings.input_path)
    assert fp.models_dir == str(settings.models_path)
    assert "checkpoints" in fp.folder_names_and_paths
    out = tmp_path / "saves"
    out.mkdir()
    (out / "shot_00007_.png").write_bytes(b"")
    folder, name, counter, subfolder, _ = fp.get_save_image_path("shot", str(out), 64, 64)
    assert (Path(folder), name, counter, subfolder) == (out, "shot", 8, "")
    folder, name, counter, subfolder, _ = fp.get_save_image_path("sub/x_%width%", str(out), 64, 32)
    assert (Path(folder), name, counter, subfolder) == (out / "sub", "x_64", 1, "sub")
    with pytest.raises(ValueError):
        fp.get_save_image_path("../../escape", str(out))
    extra = tmp_path / "loras"
    extra.mkdir()
    (extra / "style.safetensors").write_bytes(b"x")
    fp.add_model_folder_path("loras", str(extra))
    assert "style.safetensors" in fp.get_filename_list("loras")
    assert fp.get_full_path("loras", "style.safetensors") == str(extra / "style.safetensors")
    assert fp.get_full_path("loras", "../../etc/passwd") is None
    assert fp.get_annotated_filepath("a.png [output]") == str(settings.output_path / "a.png")


async def test_comfy_utils_and_helpers(shims, tmp_path: Path):
    import torch

    utils = importlib.import_module("comfy.utils")
    samples = torch.rand(1, 3, 8, 16)
    assert utils.common_upscale(samples, 4, 4, "bilinear", "center").shape == (1, 3, 4, 4)
    assert utils.common_upscale(samples, 32, 16, "nearest-exact", "disabled").shape == (1, 3, 16, 32)
    path = tmp_path / "t.safetensors"
    utils.save_torch_file({"w": torch.ones(2)}, str(path), metadata={"k": "v"})
    sd, meta = utils.load_torch_file(str(path), return_metadata=True)
    assert torch.equal(sd["w"], torch.ones(2)) and meta == {"k": "v"}
    helpers = importlib.import_module("node_helpers")
    cond = [[torch.zeros(1), {"a": 1}]]
    assert helpers.conditioning_set_values(cond, {"b": 2}) == [[cond[0][0], {"a": 1, "b": 2}]]
    assert cond[0][1] == {"a": 1}
    samplers = importlib.import_module("comfy.samplers")
    assert "euler" in samplers.KSampler.SAMPLERS and "normal" in samplers.KSampler.SCHEDULERS
    mm = importlib.import_module("comfy.model_management")
    assert str(mm.get_torch_device()) in ("cpu", "cuda:0") and mm.processing_interrupted() is False
    types = importlib.import_module("comfy.comfy_types")
    assert types.IO.ANY == "*" and types.IO.INT == "INT"


async def test_nodes_module_is_the_live_registry(shims):
    nodes = importlib.import_module("nodes")
    assert nodes.KSampler is shims.kernel.nodes.get("KSampler").cls
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(shims.kernel.nodes.names())
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["BasicDouble"] == "Double It (basic pack)"
    with pytest.raises(AttributeError):
        nodes.NoSuchNode  # noqa: B018
    server = importlib.import_module("server")
    instance = server.PromptServer.instance
    assert instance.app is not None and instance.loop is shims.kernel.loop
    assert instance.client_id is None and instance.last_node_id is None
