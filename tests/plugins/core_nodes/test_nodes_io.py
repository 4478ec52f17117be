"""SaveImage / PreviewImage / LoadImage / LoadImageMask over real HTTP through the executor."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .node_helpers import messages, run_prompt, start


def invert_and_save(prefix: str, color: int = 0xFF0000, width: int = 16, height: int = 8) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 2, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def executed(frames: list[Any]) -> dict[str, Any]:
    return {d["node"]: d["output"] for d in messages(frames, "executed")}


async def test_save_image_writes_pngs_with_prompt_and_workflow(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = invert_and_save("run/pic")
    workflow = {"id": "wf-1", "nodes": []}
    frames = await run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    images = executed(frames)["3"]["images"]
    assert images == [
        {"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
        {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"},
    ]
    path = server.kernel.settings.output_path / "run" / "pic_00001_.png"
    with Image.open(path) as img:
        assert img.size == (16, 8)
        assert json.loads(img.text["prompt"]) == prompt
        assert json.loads(img.text["workflow"]) == workflow
        pixel = img.convert("RGB").getpixel((0, 0))
    assert pixel == (0, 255, 255)  # red, inverted
    # The counter continues after the files already there.
    frames = await run_prompt(server, invert_and_save("run/pic", color=0x00FF00))
    assert [i["filename"] for i in executed(frames)["3"]["images"]] == ["pic_00003_.png", "pic_00004_.png"]
    async with server.get("/view", params={"filename": "pic_00003_.png", "subfolder": "run"}) as resp:
        assert resp.status == 200
        with Image.open(io.BytesIO(await resp.read())) as img:
            assert img.convert("RGB").getpixel((0, 0)) == (255, 0, 255)


async def test_save_image_without_metadata(comfy_server: Any) -> None:
    server = await start(comfy_server, disable_metadata=True)
    await run_prompt(server, invert_and_save("plain"), extra_data={"extra_pnginfo": {"workflow": {}}})
    with Image.open(server.kernel.settings.output_path / "plain_00001_.png") as img:
        assert "prompt" not in img.text and "workflow" not in img.text


async def test_save_image_refuses_a_prefix_outside_the_output_folder(
    comfy_server: Any, tmp_path: Path
) -> None:
    server = await start(comfy_server)
    frames = await run_prompt(server, invert_and_save("../escaped/x"))
    errors = messages(frames, "execution_error")
    assert errors and errors[0]["node_id"] == "3"
    assert "outside the output folder" in errors[0]["exception_message"]
    assert not (tmp_path / "escaped").exists()
    assert not list(tmp_path.glob("**/x_0000*"))


async def test_preview_image_goes_to_temp(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = invert_and_save("unused")
    prompt["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    frames = await run_prompt(server, prompt)
    images = executed(frames)["3"]["images"]
    assert len(images) == 2 and all(i["type"] == "temp" for i in images)
    assert images[0]["filename"].startswith("ComfyUI_temp_")
    assert images[0]["filename"].endswith("_00001_.png")
    assert (server.kernel.settings.temp_path / images[0]["filename"]).is_file()


async def test_saved_images_flow_on_to_the_next_node(comfy_server: Any) -> None:
    """SaveImage and PreviewImage output the images they were given (the reference's v0.27 output)."""
    server = await start(comfy_server)
    prompt = invert_and_save("first")
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    prompt["5"] = {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "second"}}
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    assert len(executed(frames)["4"]["images"]) == 2
    with Image.open(server.kernel.settings.output_path / "second_00002_.png") as img:
        assert img.size == (16, 8)
        assert img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # inverted twice: red again


def _rgba_png(path: Path) -> np.ndarray:
    rgba = np.zeros((8, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 2] = 50
    rgba[..., 3] = 255
    rgba[:, :6, 3] = 0  # left half transparent
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


async def test_load_image_round_trip_with_alpha_mask(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    _rgba_png(tmp_path / "input" / "in.png")
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "rgb"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "mask"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    out = server.kernel.settings.output_path
    with Image.open(out / "rgb_00001_.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape == (8, 12, 3) and tuple(rgb[0, 8]) == (200, 0, 50)
    with Image.open(out / "mask_00001_.png") as img:
        mask = np.asarray(img.convert("L"))
    # The mask is 1 - alpha: white where the picture was transparent.
    assert (mask[:, :6] == 255).all() and (mask[:, 6:] == 0).all()
    # Same content: cached; a changed file (IS_CHANGED by content hash) runs again.
    frames = await run_prompt(server, prompt)
    assert "1" in messages(frames, "execution_cached")[0]["nodes"]
    Image.new("RGB", (12, 8), (1, 2, 3)).save(tmp_path / "input" / "in.png")
    frames = await run_prompt(server, prompt)
    assert "1" not in messages(frames, "execution_cached")[0]["nodes"]


async def test_load_image_mask_channels(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    _rgba_png(tmp_path / "input" / "m.png")
    server = await start(comfy_server)
    prompt = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "red"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error"), messages(frames, "execution_error")
    with Image.open(server.kernel.settings.output_path / "red_00001_.png") as img:
        assert np.asarray(img.convert("L"))[0, 8] == 200


async def test_load_image_validation(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    server = await start(comfy_server)
    for name in ("missing.png", "../../etc/passwd"):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
        assert status == 400, body
        errors = body["node_errors"]["1"]["errors"]
        assert any(f"Invalid image file: {name}" in e["details"] for e in errors), errors


async def test_on_free_forwards_to_a_loaded_model_manager(comfy_server: Any, monkeypatch: Any) -> None:
    calls: list[tuple[Any, bool, bool]] = []
    manager = types.ModuleType("plugins.core_nodes.models.manager")
    manager.on_free = lambda kernel, unload, free: calls.append((kernel, unload, free))  # type: ignore[attr-defined]
    manager.between_prompts = lambda kernel: calls.append((kernel, "applied"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "plugins.core_nodes.models.manager", manager)
    server = await start(comfy_server)
    async with server.post("/free", json={"unload_models": True}) as resp:
        assert resp.status == 200
    # Marked, then applied at once because no prompt is running.
    assert calls == [(server.kernel, True, False), (server.kernel, "applied")]


async def test_system_stats_still_answers(comfy_server: Any) -> None:
    server = await start(comfy_server)
    status, stats = await server.json("GET", "/system_stats")
    assert status == 200
    assert stats["devices"] and stats["devices"][0]["type"] in ("cpu", "cuda")


async def test_system_stats_reports_the_cpu_under_cpu_flag(comfy_server: Any, monkeypatch: Any) -> None:
    # With --cpu the models run on the CPU even where CUDA exists: /system_stats must say so
    # (and not create a CUDA context on the event loop to ask about an unused GPU).
    calls: list[str] = []

    def cuda_call(name: str, value: Any) -> Any:
        def call(*_: Any) -> Any:
            calls.append(name)
            return value

        return call

    cuda = types.SimpleNamespace(
        is_available=cuda_call("is_available", True),
        current_device=cuda_call("current_device", 0),
        mem_get_info=cuda_call("mem_get_info", (1 << 30, 2 << 30)),
        memory_stats=cuda_call("memory_stats", {}),
        get_device_name=cuda_call("get_device_name", "Fake GPU"),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    server = await start(comfy_server, cpu=True)
    status, stats = await server.json("GET", "/system_stats")
    assert status == 200
    assert [d["type"] for d in stats["devices"]] == ["cpu"]
    assert "mem_get_info" not in calls
