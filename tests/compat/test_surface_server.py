"""The ComfyUI symbols packs use most, called by a real pack (``packs/surface_pack``) in a real server.

Each test runs the pack's node (or its import-time registrations) and checks what a user of the
server would observe: the HTTP answers, the WebSocket messages and the values the node reports in
its UI output. Symbols from modules other areas own (``comfy.model_patcher``, ``comfy.samplers``...)
fail here until those modules land.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.compat.helpers import PACKS
from tests.kernel.exec_helpers import collect, connect, executed_ui, of_type, submit
from tests.plugins.core_nodes import tiny_pipeline

PLUGINS = ["comfy_compat", "models", "core_nodes", "frontend_ext"]
CHECKPOINT = "tiny_sd1.safetensors"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / CHECKPOINT, "sd1")


@pytest.fixture
async def server(comfy_server: Any, tmp_path: Path, checkpoint: Path) -> Any:
    """Only surface_pack in custom_nodes, a checkpoint, and the files of its two folder kinds."""
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "surface_pack").symlink_to(PACKS / "surface_pack")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / CHECKPOINT).symlink_to(checkpoint)
    for folder, names in (("surface_models", ("a.bin", "b.txt", "c.pt")), ("surface_extra", ("e.ckpt",))):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"x")
    return await comfy_server(plugins=PLUGINS)


async def _run(server: Any, prompt: dict[str, Any]) -> tuple[str, str, list[Any]]:
    client_id, ws = await connect(server, uuid.uuid4().hex)
    try:
        prompt_id = await submit(server, prompt, client_id)
        frames = [f for f in await collect(ws, prompt_id, timeout=120) if isinstance(f, dict)]
    finally:
        await ws.close()
    errors = of_type(frames, "execution_error")
    assert not errors, (errors[0].get("exception_message"), errors[0].get("traceback"))
    return client_id, prompt_id, frames


def _facts(frames: list[Any], node: str) -> dict[str, Any]:
    return json.loads(executed_ui(frames)[node]["facts"][0])


async def test_routes_and_max_resolution(server: Any) -> None:
    status, body = await server.json("GET", "/surface_pack/ping")
    assert (status, body) == (200, {"pong": True, "max_resolution": 16384})
    status, info = await server.json("GET", "/object_info/SurfaceProgress")
    assert info["SurfaceProgress"]["input"]["required"]["steps"][1]["max"] == 16384


async def test_routes_added_to_the_app_while_importing_are_served(server: Any) -> None:
    assert await server.json("PUT", "/api/surface_pack/put") == (200, {"added_by": "app.router.add_route"})
    async with server.get("/surface_pack/static/surface.js") as resp:
        assert resp.status == 200 and "EXTENSION_WEB_DIRS" in await resp.text()
    from aiohttp import web

    assert isinstance(_module("server").PromptServer.instance.app, web.Application)


async def test_folder_kinds_added_at_import_are_served(server: Any) -> None:
    assert await server.json("GET", "/models/surface_kind") == (200, ["a.bin", "c.pt"])
    assert await server.json("GET", "/models/surface_kind_fn") == (200, ["e.ckpt"])
    status, kinds = await server.json("GET", "/models")
    assert {"surface_kind", "surface_kind_fn"} <= set(kinds)


async def test_extension_web_dirs_written_by_a_pack_are_served(server: Any) -> None:
    status, urls = await server.json("GET", "/extensions")
    assert "/extensions/surface_extra_web/surface.js" in urls
    async with server.get("/extensions/surface_extra_web/surface.js") as resp:
        assert resp.status == 200
        assert "EXTENSION_WEB_DIRS" in await resp.text()


async def test_a_node_written_into_node_class_mappings_runs(server: Any) -> None:
    status, info = await server.json("GET", "/object_info/SurfaceLate")
    assert status == 200 and info["SurfaceLate"]["category"] == "surface"
    assert info["SurfaceLate"]["display_name"] == "Late (named first)"
    prompt = {
        "1": {"class_type": "SurfaceLate", "inputs": {"value": 3}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    _, _, frames = await _run(server, prompt)
    assert executed_ui(frames)["2"] == {"text": ["30"]}


async def test_folder_paths_from_a_node(server: Any) -> None:
    _, _, frames = await _run(
        server, {"1": {"class_type": "SurfaceFolderPaths", "inputs": {"ckpt_name": CHECKPOINT}}}
    )
    facts = _facts(frames, "1")
    settings = server.kernel.settings
    checkpoints = settings.models_path / "checkpoints"
    assert facts["models_dir"] == str(settings.models_path)
    assert (facts["output"], facts["temp"], facts["input"]) == tuple(
        str(p) for p in (settings.output_path, settings.temp_path, settings.input_path)
    )
    assert facts["checkpoint_folders"][0] == str(checkpoints)
    assert facts["checkpoints"] == [CHECKPOINT]
    assert facts["full_path"] == str(checkpoints / CHECKPOINT)
    assert facts["missing"] is None
    assert facts["annotated"] == str(settings.output_path / "x.png")
    assert ".safetensors" in facts["pt"]
    assert {"checkpoints", "loras", "surface_kind", "surface_kind_fn"} <= set(facts["kinds"])
    assert facts["surface_kind"] == ["a.bin", "c.pt"]
    assert facts["surface_kind_fn"] == ["e.ckpt"]
    assert facts["save"] == ["shot", 1, "surface"]
    from safetensors import safe_open

    with safe_open(str(checkpoints / CHECKPOINT), "pt") as f:
        assert facts["tensors"] == len(list(f.keys()))


async def test_progress_bar_send_sync_and_the_running_queue(server: Any) -> None:
    client_id, prompt_id, frames = await _run(
        server, {"7": {"class_type": "SurfaceProgress", "inputs": {"steps": 4}}}
    )
    progress = [(m["value"], m["max"]) for m in of_type(frames, "progress") if m["node"] == "7"]
    # The server may coalesce updates that come faster than it sends; the count still climbs to 4/4.
    assert progress[-1] == (4, 4) and progress == sorted(progress)
    assert of_type(frames, "surface.event") == [{"client_id": client_id, "node": "7"}]
    assert _facts(frames, "7")["running"] == [prompt_id]


async def test_on_prompt_handler_rewrites_the_prompt(server: Any) -> None:
    _, _, frames = await _run(server, {"1": {"class_type": "SurfaceEcho", "inputs": {"text": "__handler__"}}})
    assert _facts(frames, "1")["text"] == "rewritten by the on_prompt handler"


async def test_common_upscale_from_a_node(server: Any) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SurfaceUpscale", "inputs": {"image": ["1", 0]}},
    }
    _, _, frames = await _run(server, prompt)
    assert _facts(frames, "2")["shape"] == [1, 12, 24, 3]


async def test_model_management_from_a_node(server: Any) -> None:
    _, _, frames = await _run(server, {"1": {"class_type": "SurfaceDevices", "inputs": {}}})
    facts = _facts(frames, "1")
    assert facts["device"] in ("cpu", "cuda:0")
    assert facts["offload"] == "cpu" and facts["intermediate"] == "cpu"
    assert facts["unet_dtype"] == "torch.float32" and facts["fp16"] is False
    assert facts["cast"] == "torch.float32"
    assert facts["listen"] is True


async def test_model_objects_and_samplers_from_a_node(server: Any) -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "3": {
            "class_type": "SurfaceModel",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "image": ["2", 0]},
        },
    }
    _, _, frames = await _run(server, prompt)
    facts = _facts(frames, "3")
    for key in (
        "patcher",
        "base_model",
        "eps",
        "clip",
        "vae",
        "lora_new",
        "samplers",
        "ksampler",
        "latent_equal",
    ):
        assert facts[key] is True, key
    assert facts["guider"] == "CFGGuider"
    assert facts["attention"] == [1, 4, 16]
    assert facts["linear"] == [2, 16]
    assert facts["latent"] == [1, 4, 8, 8]
    assert facts["cond"] == [1, 3, True]
    assert facts["inpaint"] == [[1, 4, 8, 8], True]


# --- the compatibility modules this area owns, used the way packs use them -------------------------


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


async def test_folder_names_and_paths_writes_reach_the_server(server: Any, tmp_path: Path) -> None:
    folder_paths = _module("folder_paths")
    extra = tmp_path / "more_checkpoints"
    extra.mkdir()
    (extra / "extra.safetensors").write_bytes(b"x")
    (extra / "quant.gguf").write_bytes(b"x")
    table = folder_paths.folder_names_and_paths
    table["checkpoints"][0].append(str(extra))  # TensorRT's way of adding a folder
    assert await server.json("GET", "/models/checkpoints") == (200, ["extra.safetensors", CHECKPOINT])
    table["checkpoints"][1].add(".gguf")  # AnimateDiff's way of adding a suffix
    assert "quant.gguf" in folder_paths.get_filename_list("checkpoints")
    assert table.get("no_such_kind", ([], set())) == ([], set())  # GGUF's probe
    assert "unet" not in table and "diffusion_models" in table
    with pytest.raises(TypeError, match="pair"):
        table["broken"] = "not a pair"


async def test_comfy_extras_modules_serve_the_registered_classes(server: Any) -> None:
    import torch

    nodes_mask = _module("comfy_extras.nodes_mask")
    assert nodes_mask.GrowMask is server.kernel.nodes.get("GrowMask").cls
    mask = torch.zeros(1, 5, 5)
    mask[0, 2, 2] = 1
    (grown,) = nodes_mask.GrowMask().expand_mask(mask, 1, False)
    assert int(grown.sum()) == 9
    upscale = _module("comfy_extras.nodes_upscale_model")
    assert set(upscale.NODE_CLASS_MAPPINGS) == {"UpscaleModelLoader", "ImageUpscaleWithModel"}
    assert callable(upscale.ImageUpscaleWithModel().upscale)
    # A module lists the reference's classes of that module this server registers, and only those.
    catalog = _module("comfy_extras._catalog").MODULES
    flux = set(_module("comfy_extras.nodes_flux").NODE_CLASS_MAPPINGS)
    assert flux == {name for name in catalog["nodes_flux"] if name in server.kernel.nodes}
    # A class of the reference this server does not register: importing it fails on that name only.
    module, name = next((m, n) for m, names in catalog.items() for n in names if n not in server.kernel.nodes)
    with pytest.raises(ImportError, match=name):
        exec(f"from comfy_extras.{module} import {name}", {})
    assert name not in _module(f"comfy_extras.{module}").NODE_CLASS_MAPPINGS


async def test_execution_validate_prompt_is_the_servers_validation(server: Any) -> None:
    execution = _module("execution")
    good = {"1": {"class_type": "SurfaceEcho", "inputs": {"text": "hi"}}}
    ok, error, outputs, node_errors = await execution.validate_prompt("p1", good, None)
    assert (ok, error, outputs, node_errors) == (True, None, ["1"], {})
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    ok, error, outputs, _ = await execution.validate_prompt("p2", bad, None)
    assert ok is False and error["type"] == "missing_node_type" and outputs == []
    assert execution.full_type_name(ValueError) == "ValueError"
    assert execution.full_type_name(execution.PromptExecutor) == "execution.PromptExecutor"


async def test_execution_get_input_and_output_data_run_a_node(server: Any) -> None:
    import torch

    execution = _module("execution")
    invert = server.kernel.nodes.get("ImageInvert").cls
    image = torch.full((1, 2, 2, 3), 0.25)
    data, missing, _ = execution.get_input_data({"image": ["9", 0]}, invert, "5", {"9": [[image]]})
    assert missing == {} and data["image"][0] is image
    outputs, ui, subgraph, pending = await execution.get_output_data("p", "5", invert(), data)
    assert torch.allclose(outputs[0][0], torch.full((1, 2, 2, 3), 0.75)) and ui == {} and not subgraph
    data, missing, _ = execution.get_input_data({"image": ["9", 0]}, invert, "5", None)
    assert missing == {"image": True} and data["image"] == [None]


async def test_execution_get_input_data_passes_hidden_literals(server: Any) -> None:
    """A hidden entry that names no special token is an input (loop nodes clone with one)."""
    execution = _module("execution")

    class Looping:
        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {
                "required": {"flow": ("INT", {})},
                "hidden": {"remaining": ("INT",), "node_id": "UNIQUE_ID", "raw": "PROMPT"},
            }

    data, missing, _ = execution.get_input_data(
        {"flow": 1, "remaining": 3, "node_id": "forged", "raw": "forged"}, Looping, "7", None
    )
    assert missing == {}
    assert data["flow"] == [1] and data["remaining"] == [3]
    # Special tokens come from the server, never from the prompt's inputs.
    assert data["node_id"] == ["7"] and data["raw"] == [None]


async def test_prompt_queue_put_runs_the_prompt(server: Any) -> None:
    """VideoHelperSuite requeues through ``prompt_queue.put`` with the reference's item tuple."""
    instance = _module("server").PromptServer.instance
    client_id, ws = await connect(server, uuid.uuid4().hex)
    try:
        prompt_id = str(_module("server").uuid.uuid4())
        prompt = {"1": {"class_type": "SurfaceEcho", "inputs": {"text": "requeued"}}}
        instance.prompt_queue.put((-instance.number, prompt_id, prompt, {"client_id": client_id}, ["1"], {}))
        frames = [f for f in await collect(ws, prompt_id, timeout=60) if isinstance(f, dict)]
    finally:
        await ws.close()
    assert _facts(frames, "1")["text"] == "requeued"
    assert instance.prompt_queue.get_tasks_remaining() == 0


async def test_send_sync_encodes_a_preview_tuple(server: Any) -> None:
    import aiohttp
    from PIL import Image

    server_module = _module("server")
    client_id, ws = await connect(server, uuid.uuid4().hex)
    try:
        image = Image.new("RGB", (40, 20), (255, 0, 0))
        server_module.PromptServer.instance.send_sync(
            server_module.BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ("PNG", image, 10), client_id
        )
        msg = await ws.receive(timeout=10)
    finally:
        await ws.close()
    assert msg.type == aiohttp.WSMsgType.BINARY
    assert msg.data[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"  # PREVIEW_IMAGE, PNG
    import io

    assert Image.open(io.BytesIO(msg.data[8:])).size == (10, 5)


async def test_nodes_mappings_and_runtime_pack_loading(server: Any, tmp_path: Path) -> None:
    nodes = _module("nodes")
    original = nodes.NODE_CLASS_MAPPINGS["SurfaceEcho"]
    nodes.NODE_CLASS_MAPPINGS["SurfaceEcho"] = type("Impostor", (), {})
    assert nodes.NODE_CLASS_MAPPINGS["SurfaceEcho"] is original  # the first registration stays
    nodes.NODE_DISPLAY_NAME_MAPPINGS["SurfaceEcho"] = "Echo (renamed)"
    status, info = await server.json("GET", "/object_info/SurfaceEcho")
    assert info["SurfaceEcho"]["display_name"] == "Echo (renamed)"
    pack = tmp_path / "late_pack.py"
    pack.write_text(
        "class LateNode:\n"
        "    CATEGORY = 'late'\n    RETURN_TYPES = ('INT',)\n    FUNCTION = 'run'\n"
        "    @classmethod\n    def INPUT_TYPES(cls):\n        return {'required': {}}\n"
        "    def run(self):\n        return (1,)\n"
        "NODE_CLASS_MAPPINGS = {'LateNode': LateNode}\n"
    )
    assert await nodes.load_custom_node(str(pack)) is True
    status, info = await server.json("GET", "/object_info/LateNode")
    assert status == 200 and info["LateNode"]["category"] == "late"
    assert nodes.get_module_name(str(pack)) == "late_pack"
    assert "surface_pack" in nodes.LOADED_MODULE_DIRS
    (tmp_path / "broken_pack.py").write_text("raise RuntimeError('no')\n")
    assert await nodes.load_custom_node(str(tmp_path / "broken_pack.py")) is False


async def test_comfy_extras_guidance_helpers(server: Any) -> None:
    """Inspire-Pack, Easy-Use and Impact-Pack build guiders and noise from these helpers."""
    import torch

    perpneg = _module("comfy_extras.nodes_perpneg")
    custom = _module("comfy_extras.nodes_custom_sampler")
    x = torch.zeros(1, 4, 2, 2)
    empty = torch.full_like(x, 0.5)
    positive = empty + torch.rand_like(x)
    along = empty + 2 * (positive - empty)  # a negative parallel to the positive: nothing is left
    assert torch.allclose(
        perpneg.perp_neg(x, positive, along, empty, 1.0, 7.0), empty + 7.0 * (positive - empty)
    )
    orthogonal = torch.zeros_like(x)
    orthogonal[0, 0, 0, 0] = 1.0
    pos = empty + orthogonal.roll(1, dims=1)
    result = perpneg.perp_neg(x, pos, empty + orthogonal, empty, 2.0, 3.0)
    assert torch.allclose(result, empty + 3.0 * (pos - empty - 2.0 * orthogonal))
    assert issubclass(perpneg.Guider_PerpNeg, _module("comfy.samplers").CFGGuider)
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [3, 5]}
    expected = _module("comfy.sample").prepare_noise(latent["samples"], 42, [3, 5])
    assert torch.equal(custom.Noise_RandomNoise(42).generate_noise(latent), expected)
    assert not custom.Noise_EmptyNoise().generate_noise(latent).any()
    assert issubclass(custom.Guider_Basic, _module("comfy.samplers").CFGGuider)


async def test_v3_ui_previews_write_files_the_server_serves(server: Any) -> None:
    import torch

    ui = _module("comfy_api.latest.ui")
    mask = torch.zeros(2, 6, 4)
    mask[1] = 1.0
    shown = ui.PreviewMask(mask).as_dict()["images"]
    assert len(shown) == 2 and all(entry["type"] == "temp" for entry in shown)
    async with server.get("/view", params={"filename": shown[1]["filename"], "type": "temp"}) as resp:
        assert resp.status == 200
        import io

        from PIL import Image

        picture = Image.open(io.BytesIO(await resp.read()))
    assert picture.size == (4, 6) and picture.getpixel((0, 0))[:3] == (255, 255, 255)
    assert ui.PreviewText("hello").as_dict() == {"text": ("hello",)}


async def test_comfy_extras_model_sampling_helpers(server: Any) -> None:
    """AnimateDiff-Evolved builds LCM samplings from these classes."""
    import torch

    advanced = _module("comfy_extras.nodes_model_advanced")
    base = _module("comfy.model_sampling").ModelSamplingDiscrete()
    distilled = advanced.ModelSamplingDiscreteDistilled()
    assert distilled.sigmas.shape == (50,)
    assert torch.allclose(distilled.sigmas[[0, -1]], base.sigmas[[19, 999]])
    assert distilled.timestep(distilled.sigmas[-1:]).tolist() == [999]
    assert torch.allclose(distilled.sigma(torch.tensor([999.0])), distilled.sigmas[-1:])

    class Sampling(advanced.ModelSamplingDiscreteDistilled, advanced.LCM):
        pass

    sampling = Sampling()
    sigma = sampling.sigmas[-1:]
    x, out = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    t = 999 * 10.0
    c_skip, c_out = 0.25 / (t**2 + 0.25), t / (t**2 + 0.25) ** 0.5
    expected = c_out * (x - out * sigma) + c_skip * x
    assert torch.allclose(sampling.calculate_denoised(sigma, out, x), expected)
    assert torch.equal(advanced.X0().calculate_denoised(sigma, out, x), out)
    assert advanced.rescale_zero_terminal_snr_sigmas(base.sigmas)[-1] > 4000


async def test_prompt_executor_runs_a_prompt_to_completion(server: Any) -> None:
    import asyncio

    execution = _module("execution")
    executor = execution.PromptExecutor()
    good = {"1": {"class_type": "SurfaceEcho", "inputs": {"text": "from PromptExecutor"}}}
    await asyncio.to_thread(executor.execute, good, str(uuid.uuid4()), {}, None)
    assert executor.success is True
    assert json.loads(executor.history_result["outputs"]["1"]["facts"][0]) == {"text": "from PromptExecutor"}
    bad = {"1": {"class_type": "SurfaceEcho", "inputs": {}}}
    await asyncio.to_thread(executor.execute, bad, str(uuid.uuid4()), {}, None)
    assert executor.success is False
    with pytest.raises(RuntimeError, match="worker thread"):
        executor.execute(good, "x", {}, None)


async def test_v3_io_takes_the_reference_positional_forms(server: Any) -> None:
    status, info = await server.json("GET", "/object_info/SurfaceV3")
    assert status == 200, info
    node = info["SurfaceV3"]
    blur = node["input"]["required"]["blur_type"]
    assert (
        blur[0] == "COMBO" and blur[1]["options"] == ["gaussian", "box"] and blur[1]["default"] == "gaussian"
    )
    size = node["input"]["required"]["size"]
    assert size[1]["display_name"] == "Kernel size" and size[1]["tooltip"] == "odd sizes only"
    assert node["input"]["optional"]["data"][0] == "SURFACE_DATA"
    assert node["output_name"] == ["Summary"]  # the display name, given positionally
    prompt = {
        "1": {"class_type": "SurfaceV3", "inputs": {"blur_type": "box", "size": 5}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    _, _, frames = await _run(server, prompt)
    assert executed_ui(frames)["2"] == {"text": ["box:5"]}


async def test_comfy_extras_camera_embeddings(server: Any) -> None:
    import math

    import torch

    embeddings = _module("comfy_extras.nodes_stable3d").camera_embeddings(10, 90)
    assert embeddings.shape == (1, 1, 4)
    expected = torch.tensor([[[-math.radians(10), 1.0, 0.0, math.pi / 2]]])
    assert torch.allclose(embeddings.float(), expected, atol=1e-6)


async def test_comfy_extras_mask_composite(server: Any) -> None:
    """Impact-Pack pastes images with ``nodes_mask.composite(dest, src, x, y, mask, 1, resize)``."""
    import torch

    composite = _module("comfy_extras.nodes_mask").composite
    destination = torch.zeros(1, 3, 6, 8)
    source = torch.ones(1, 3, 4, 4)
    out = composite(destination.clone(), source, 6, 1, None, 1, False)
    assert out[0, 0].sum() == 2 * 4  # only the two columns left of the right edge land
    assert out[0, 0, 1:5, 6:].eq(1).all() and out[0, 0, :, :6].eq(0).all()
    half = torch.full((4, 4), 0.5)
    out = composite(destination.clone(), source, 0, 0, half, 1, False)
    assert torch.allclose(out[0, :, :4, :4], torch.full((3, 4, 4), 0.5))
    out = composite(destination.clone(), source, -2, -3, None, 1, False)
    assert out[0, 0].sum() == 1 * 2 and out[0, 0, 0, :2].eq(1).all()
    latent = composite(torch.zeros(2, 4, 8, 8), torch.ones(1, 4, 2, 2), 16, 8, None, 8, False)
    assert latent[:, :, 1:3, 2:4].eq(1).all() and latent.sum() == 2 * 4 * 4
    resized = composite(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2), 0, 0, None, 1, True)
    assert resized.eq(1).all()


async def test_comfy_execution_helpers(server: Any) -> None:
    validation = _module("comfy_execution.validation")
    assert validation.validate_node_input("INT", "INT,FLOAT") is True
    assert validation.validate_node_input("INT,STRING", "INT", strict=True) is False
    assert validation.validate_node_input("IMAGE", "*") is True
    graph = _module("comfy_execution.graph")
    assert graph.get_input_info(server.kernel.nodes.get("ImageScale").cls, "width")[:2] == ("INT", "required")
    assert graph.get_input_info(server.kernel.nodes.get("ImageScale").cls, "nope") == (None, None, None)
    blocker = graph.ExecutionBlocker(None)
    assert blocker.message is None
    dynprompt = graph.DynamicPrompt({"1": {"class_type": "SurfaceEcho", "inputs": {"text": "x"}}})
    assert dynprompt.get_node("1")["class_type"] == "SurfaceEcho"
    builder = _module("comfy_execution.graph_utils").GraphBuilder()
    node = builder.node("SurfaceEcho", text="y")
    assert builder.finalize()[node.id]["inputs"] == {"text": "y"}
    assert _module("comfy_execution.graph_utils").is_link(node.out(0))


async def test_io_type_names_compare_like_the_reference(server: Any) -> None:
    io_types = _module("comfy.comfy_types.node_typing").IO
    assert _module("comfy.comfy_types").IO is io_types
    assert not (io_types.NUMBER != "INT") and not (io_types.ANY != "IMAGE") and not ("MASK" != io_types.ANY)
    assert io_types.INT != "FLOAT" and io_types.IMAGE != 3
    assert io_types.PRIMITIVE != "IMAGE" and not (io_types.PRIMITIVE != "STRING,INT")
    assert str(io_types.SEGS) == "SEGS" and {io_types.INT: 1}["INT"] == 1


async def test_core_node_methods_under_the_reference_names(server: Any) -> None:
    """Packs call core nodes directly: ``nodes.VAEEncode.vae_encode_crop_pixels`` and friends."""
    import torch

    nodes = _module("nodes")
    pixels = torch.rand(1, 70, 45, 3)
    cropped = nodes.VAEEncode.vae_encode_crop_pixels(pixels)
    assert cropped.shape == (1, 64, 40, 3)
    assert torch.equal(cropped, pixels[:, 3:67, 2:42])
    image = torch.rand(1, 8, 8, 3)
    (scaled,) = nodes.ImageScale().upscale(image, "nearest-exact", 16, 4, "disabled")
    assert scaled.shape == (1, 4, 16, 3)
    cond = [[torch.ones(1, 2, 4), {"pooled_output": torch.ones(1, 4)}]]
    (zero,) = nodes.ConditioningZeroOut().zero_out(cond)
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any()
    (joined,) = nodes.ConditioningConcat().concat(cond, [[torch.zeros(1, 3, 4), {}]])
    assert joined[0][0].shape == (1, 5, 4)
    (mixed,) = nodes.ConditioningAverage().addWeighted(cond, [[torch.zeros(1, 2, 4), {}]], 0.25)
    assert torch.allclose(mixed[0][0], torch.full((1, 2, 4), 0.25))
    (masked,) = nodes.ConditioningSetMask().append(cond, torch.ones(8, 8), "default", 0.5)
    assert masked[0][1]["mask_strength"] == 0.5 and masked[0][1]["mask"].shape == (1, 8, 8)
    shown = nodes.PreviewImage().save_images(torch.rand(1, 4, 6, 3))["ui"]["images"]
    assert shown[0]["type"] == "temp"
    async with server.get("/view", params={"filename": shown[0]["filename"], "type": "temp"}) as resp:
        assert resp.status == 200
