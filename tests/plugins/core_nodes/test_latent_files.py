"""SaveLatent / LoadLatent: the reference's interface and its ``.latent`` file format, through the server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .node_helpers import messages, run_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def test_interface_matches_the_reference(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    save, load = info["SaveLatent"], info["LoadLatent"]
    assert save["input"]["required"] == {
        "samples": ["LATENT"],
        "filename_prefix": ["STRING", {"default": "latents/ComfyUI"}],
    }
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert (save["output"], save["output_name"], save["output_node"]) == (["LATENT"], ["samples"], True)
    assert (save["category"], save["display_name"]) == ("model/latent", "Save Latent")
    assert load["input"]["required"]["latent"] == [[]]  # no .latent files in input/ yet
    assert (load["output"], load["output_node"], load["display_name"]) == (["LATENT"], False, "Load Latent")


async def test_saved_latent_loads_back_and_legacy_files_are_rescaled(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", "models"])
    settings = server.kernel.settings
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 2}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/t"}},
    }
    frames = await run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    [executed] = messages(frames, "executed")
    assert executed["output"] == {
        "latents": [{"filename": "t_00001_.latent", "subfolder": "latents", "type": "output"}]
    }
    written = settings.output_path / "latents" / "t_00001_.latent"
    with safe_open(str(written), framework="pt") as f:
        assert sorted(f.keys()) == ["latent_format_version_0", "latent_tensor"]
        assert f.get_tensor("latent_tensor").shape == (2, 4, 4, 8)
        meta = f.metadata()
    assert json.loads(meta["prompt"])["2"]["class_type"] == "SaveLatent"
    assert json.loads(meta["workflow"]) == {"w": 1}

    # LoadLatent reads input/: the new format as stored, the first format scaled back by 1/0.18215.
    values = torch.arange(8, dtype=torch.float32).reshape(1, 4, 1, 2)
    save_file(
        {"latent_tensor": values, "latent_format_version_0": torch.tensor([])},
        str(settings.input_path / "new.latent"),
    )
    save_file({"latent_tensor": values}, str(settings.input_path / "old.latent"))
    (settings.input_path / "not_a_latent.png").write_bytes(b"")
    status, info = await server.json("GET", "/object_info/LoadLatent")
    assert info["LoadLatent"]["input"]["required"]["latent"] == [["new.latent", "old.latent"]]
    results = {}
    for name in ("new.latent", "old.latent"):
        prompt = {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
            "2": {
                "class_type": "SaveLatent",
                "inputs": {"samples": ["1", 0], "filename_prefix": f"back_{name[:3]}"},
            },
        }
        await run_prompt(server, prompt)
        with safe_open(str(settings.output_path / f"back_{name[:3]}_00001_.latent"), framework="pt") as f:
            results[name] = f.get_tensor("latent_tensor")
    assert torch.equal(results["new.latent"], values)
    assert torch.allclose(results["old.latent"], values / 0.18215)


async def test_bad_names_are_rejected_before_running(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", "models"])
    for name in ("missing.latent", "../../etc/passwd"):
        prompt = {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
            "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0]}},
        }
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
        assert status == 400, body
        assert "1" in body["node_errors"]
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "../../escape"}},
    }
    frames = await run_prompt(server, prompt)
    assert messages(frames, "execution_error")
    assert not list(server.kernel.settings.output_path.parent.glob("escape*"))
