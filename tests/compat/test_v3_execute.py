"""Packs call the reference's V3 core classes directly: ``Blur.execute(image, 3, 1.0)[0]``,
``SamplerCustomAdvanced().execute(noise=..., guider=...)``, ``(a, b) = out``, ``out.result``.

The classes come from the ``comfy_extras.nodes_*`` compat modules under the reference's Python
class names; each call is checked against the same node run through the server (its saved image,
latent or previewed text) or against the node's own ``FUNCTION``, and the table of the reference's
classes (``plugins/comfy_compat/reference_classes.json``) is walked row by row.
"""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.comfy_compat.reference_table import TABLE_PATH, reference_classes
from tests.kernel.exec_helpers import collect, connect, executed_ui, of_type, submit
from tests.plugins.core_nodes import tiny_pipeline
from tests.plugins.core_nodes.golden import GOLDEN_DIR

PLUGINS = ["comfy_compat", "models", "core_nodes"]
CHECKPOINT = "tiny_sd1.safetensors"
GOLDEN = GOLDEN_DIR / "object_info_core.json"
INPUT_IMAGE = "v3_input.png"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _module(name: str) -> Any:
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline.write_checkpoint(tmp_path_factory.mktemp("ckpt") / CHECKPOINT, "sd1")


@pytest.fixture
async def server(comfy_server: Any, tmp_path: Path, checkpoint: Path) -> Any:
    """A server with the compat layer, a tiny SD1 checkpoint and an RGBA input image."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / CHECKPOINT).symlink_to(checkpoint)
    (tmp_path / "input").mkdir()
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(12, 10, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(rng.random((12, 10)) < 0.15, 0, 255)  # a few transparent pixels
    Image.fromarray(pixels, "RGBA").save(tmp_path / "input" / INPUT_IMAGE)
    return await comfy_server(plugins=PLUGINS)


async def _run(server: Any, prompt: dict[str, Any]) -> list[dict[str, Any]]:
    client_id, ws = await connect(server, uuid.uuid4().hex)
    try:
        prompt_id = await submit(server, prompt, client_id)
        frames = [f for f in await collect(ws, prompt_id, timeout=120) if isinstance(f, dict)]
    finally:
        await ws.close()
    errors = of_type(frames, "execution_error")
    assert not errors, (errors[0].get("exception_message"), errors[0].get("traceback"))
    return frames


def _saved_pixels(base: Path, ui: dict[str, Any]) -> np.ndarray:
    (image,) = ui["images"]
    return np.asarray(Image.open(base / "output" / image["subfolder"] / image["filename"]))


def _as_saved(image: torch.Tensor) -> np.ndarray:
    """What SaveImage writes for a one-image batch."""
    return np.clip(255.0 * image[0].float().cpu().numpy(), 0, 255).astype(np.uint8)


def _four_calls(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The reference's four call forms: on the class and an instance, positional and keyword."""
    return [cls.execute(*args), cls.execute(**kwargs), cls().execute(*args), cls().execute(**kwargs)]


# --- the table -------------------------------------------------------------------------------------


def test_the_table_covers_the_golden_classes_and_the_classes_packs_import() -> None:
    rows = reference_classes()
    golden = json.loads(GOLDEN.read_text())
    by_id = {row.node_id: row for row in rows}
    for node_id, info in golden.items():
        assert by_id[node_id].module == info["python_module"], node_id
        assert by_id[node_id].in_golden
    # What packs import by class name (compat-surface.md), with the reference's facts about them.
    facts = {(row.module, row.class_name): row for row in rows}
    blur = facts["comfy_extras.nodes_post_processing", "Blur"]
    assert (blur.node_id, blur.v3, blur.execute) == ("ImageBlur", True, ("image", "blur_radius", "sigma"))
    grow = facts["comfy_extras.nodes_mask", "GrowMask"]
    assert grow.execute_aliases == ("expand_mask",) and grow.v3
    assert facts["comfy_extras.nodes_hunyuan", "LatentUpscaleModelLoader"].execute == ("model_name",)
    assert facts["comfy_extras.nodes_custom_sampler", "SamplerCustomAdvanced"].execute == (
        "noise",
        "guider",
        "sampler",
        "sigmas",
        "latent_image",
    )
    # The reference's SwitchNode takes on_true before on_false, unlike its schema's input order.
    assert facts["comfy_extras.nodes_logic", "SwitchNode"].execute == ("switch", "on_true", "on_false")
    assert not facts["comfy_extras.nodes_hooks", "CreateHookModelAsLora"].v3
    assert not facts["nodes", "KSampler"].v3
    assert json.loads(TABLE_PATH.read_text())["reference_version"] == "0.27.0"


async def test_every_registered_class_of_the_table_has_the_reference_names_and_execute(server: Any) -> None:
    nodes = server.kernel.nodes
    registered = v3 = 0
    for row in reference_classes():
        module = _module(row.module)
        entry = nodes.get(row.node_id)
        if entry is None:
            if row.module != "nodes":
                assert row.node_id not in module.NODE_CLASS_MAPPINGS
                with pytest.raises(AttributeError):
                    getattr(module, row.node_id)
            continue
        registered += 1
        cls = entry.cls
        assert getattr(module, row.node_id) is cls, row
        # A class name that is also a node id of the module names that node (the reference maps
        # ModelMergeSD2 to the class ModelMergeSD1); any other is an alias of this row's node.
        named = (
            nodes.get(row.class_name)
            if any(r.node_id == row.class_name for r in reference_classes() if r.module == row.module)
            else entry
        )
        assert named is not None and getattr(module, row.class_name) is named.cls, row
        if row.module != "nodes":
            assert module.NODE_CLASS_MAPPINGS[row.node_id] is cls
            assert row.class_name in dir(module)
        if not row.v3:
            continue
        v3 += 1
        expected = list(row.execute) + (["kwargs"] if row.execute_varkw else [])
        assert list(inspect.signature(cls.execute).parameters) == expected, row
        if cls.FUNCTION != "execute":
            assert list(inspect.signature(cls().execute).parameters) == expected, row
        for alias in row.execute_aliases:
            assert callable(getattr(cls, alias)), (row, alias)
    golden = sum(row.in_golden for row in reference_classes())
    assert registered >= golden and v3 > 150


# --- calls checked against the server ------------------------------------------------------------------


async def test_image_mask_and_string_nodes_called_directly_equal_the_server_run(
    server: Any, tmp_path: Path
) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blur"}},
        "4": {"class_type": "GrowMask", "inputs": {"mask": ["1", 1], "expand": 2, "tapered_corners": True}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "grow"}},
        "7": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["4", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "join"}},
        "9": {
            "class_type": "StringConcatenate",
            "inputs": {"string_a": "héllo", "string_b": "wörld ✓", "delimiter": " · "},
        },
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}},
    }
    ui = executed_ui(await _run(server, prompt))

    image, mask = _module("nodes").LoadImage().load_image(INPUT_IMAGE)
    assert float(mask.sum()) > 0  # the transparent pixels make a mask to grow

    blur = _module("comfy_extras.nodes_post_processing").Blur
    assert blur is server.kernel.nodes.get("ImageBlur").cls
    blurred = _four_calls(blur, (image, 3, 1.5), {"image": image, "blur_radius": 3, "sigma": 1.5})
    for out in blurred:
        torch.testing.assert_close(out[0], blurred[0][0], rtol=0, atol=0)
    assert np.array_equal(_saved_pixels(tmp_path, ui["3"]), _as_saved(blurred[0][0]))
    assert not torch.equal(blurred[0][0], image)  # the blur did something

    nodes_mask = _module("comfy_extras.nodes_mask")
    grown = _four_calls(
        nodes_mask.GrowMask, (mask, 2, True), {"mask": mask, "expand": 2, "tapered_corners": True}
    )
    (grown_mask,) = grown[0]
    for out in grown:
        assert torch.equal(out[0], grown_mask)
    assert float(grown_mask.sum()) > float(mask.sum())
    as_image = nodes_mask.MaskToImage.execute(mask=grown_mask)[0]
    assert np.array_equal(_saved_pixels(tmp_path, ui["6"]), _as_saved(as_image))

    join = _module("comfy_extras.nodes_compositing").JoinImageWithAlpha
    joined = _four_calls(join, (image, grown_mask), {"image": image, "alpha": grown_mask})
    for out in joined:
        assert torch.equal(out[0], joined[0][0])
    assert joined[0][0].shape[-1] == 4
    assert np.array_equal(_saved_pixels(tmp_path, ui["8"]), _as_saved(joined[0][0]))

    concat = _module("comfy_extras.nodes_string").StringConcatenate
    texts = _four_calls(
        concat,
        ("héllo", "wörld ✓", " · "),
        {"string_a": "héllo", "string_b": "wörld ✓", "delimiter": " · "},
    )
    assert [t.result for t in texts] == [("héllo · wörld ✓",)] * 4
    assert ui["10"]["text"] == [texts[0][0]]


async def test_sampler_custom_advanced_called_directly_equals_the_server_run(
    server: Any, tmp_path: Path
) -> None:
    settings = {"seed": 11, "steps": 3, "cfg": 4.0, "pos": "a red cube", "neg": "blurry"}
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": settings["pos"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": settings["neg"]}},
        "4": {"class_type": "RandomNoise", "inputs": {"noise_seed": settings["seed"]}},
        "5": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": settings["cfg"]},
        },
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": settings["steps"], "denoise": 1.0},
        },
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["4", 0],
                "guider": ["5", 0],
                "sampler": ["6", 0],
                "sigmas": ["7", 0],
                "latent_image": ["8", 0],
            },
        },
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "latents/v3"}},
    }
    await _run(server, prompt)
    (saved,) = (tmp_path / "output" / "latents").glob("v3*.latent")
    from safetensors.torch import load_file

    served = load_file(str(saved))["latent_tensor"]

    nodes = _module("nodes")
    custom = _module("comfy_extras.nodes_custom_sampler")
    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)[:3]
    (positive,) = nodes.CLIPTextEncode().encode(clip, settings["pos"])
    (negative,) = nodes.CLIPTextEncode().encode(clip, settings["neg"])
    inputs = {
        "noise": custom.RandomNoise.execute(noise_seed=settings["seed"])[0],
        "guider": custom.CFGGuider.execute(model, positive, negative, settings["cfg"])[0],
        "sampler": custom.KSamplerSelect().execute("euler")[0],
        "sigmas": custom.BasicScheduler.execute(model, "normal", settings["steps"], 1.0).result[0],
        "latent_image": nodes.EmptyLatentImage().generate(64, 64, 1)[0],
    }
    sampler = custom.SamplerCustomAdvanced
    # ComfyUI-LTXVideo's form: an instance, keyword arguments; and the others.
    runs = [
        sampler().execute(**inputs),
        sampler.execute(**inputs),
        sampler.execute(*inputs.values()),
        sampler().execute(*inputs.values()),
    ]
    classic = sampler().sample(**inputs)
    for run in runs:
        (output, denoised) = run
        assert run.block_execution is None and run.expand is None and run.ui is None
        torch.testing.assert_close(output["samples"], classic[0]["samples"], rtol=0, atol=1e-6)
        torch.testing.assert_close(denoised["samples"], classic[1]["samples"], rtol=0, atol=1e-6)
        torch.testing.assert_close(output["samples"], served, rtol=0, atol=1e-5)

    # A model patch node of the reference's V3 set: the patched model samples differently, and the
    # same through execute() as through the classic method.
    cfg_zero = _module("comfy_extras.nodes_cfg").CFGZeroStar
    patched = cfg_zero.execute(model=model)[0]
    patched_classic = getattr(cfg_zero(), cfg_zero.FUNCTION)(model)[0]
    guided = [
        sampler.execute(**{**inputs, "guider": custom.CFGGuider.execute(m, positive, negative, 4.0)[0]})[0]
        for m in (patched, patched_classic)
    ]
    torch.testing.assert_close(guided[0]["samples"], guided[1]["samples"], rtol=0, atol=1e-6)
    assert not torch.allclose(guided[0]["samples"], served, atol=1e-4)


# --- calling conventions ---------------------------------------------------------------------------


async def test_results_index_unpack_and_carry_the_node_output_fields(server: Any) -> None:
    io = _module("comfy_api.latest.io")
    primitive = _module("comfy_extras.nodes_primitive")
    out = primitive.Int.execute(5)
    assert isinstance(out, io.NodeOutput) and out == (5,) and out[0] == 5
    assert out.result == (5,) and out.args == (5,) and list(out) == [5]
    assert (out.ui, out.expand, out.block_execution) == (None, None, None)
    # io.NodeOutput itself, as packs build it, indexes and unpacks like the reference's.
    made = io.NodeOutput(1, "two", ui={"text": ["x"]})
    first, second = made
    assert (first, second, made[1], made.args, made.ui) == (1, "two", "two", (1, "two"), {"text": ["x"]})
    # The reference's SwitchNode signature order (on_true before on_false) binds positionals.
    switch = _module("comfy_extras.nodes_logic").SwitchNode
    assert switch.execute(True, "yes", "no")[0] == "yes"
    assert switch.execute(False, on_false="no", on_true="yes")[0] == "no"
    with pytest.raises(TypeError, match="positional"):
        primitive.Int.execute(1, 2)
    with pytest.raises(TypeError, match="multiple values"):
        primitive.Int.execute(1, value=2)


async def test_dynamic_combo_dicts_and_hidden_inputs_are_translated(server: Any) -> None:
    post = _module("comfy_extras.nodes_post_processing")
    image = torch.rand(1, 9, 7, 3)
    choice = {"resize_type": "scale dimensions", "width": 4, "height": 6, "crop": "disabled"}
    (resized,) = post.ResizeImageMaskNode.execute(image, "nearest-exact", choice)
    classic = post.ResizeImageMaskNode().execute(
        image,
        "scale dimensions",
        "nearest-exact",
        **{"resize_type.width": 4, "resize_type.height": 6, "resize_type.crop": "disabled"},
    )
    assert resized.shape == (1, 6, 4, 3) and torch.equal(resized, classic[0])
    # GetImageSize reads its hidden unique_id; a direct call has none, as in the reference.
    size = _module("comfy_extras.nodes_images").GetImageSize.execute(image)
    assert tuple(size.result) == (7, 9, 1)


async def test_packs_subclass_the_served_classes(server: Any) -> None:
    post = _module("comfy_extras.nodes_post_processing")
    served = server.kernel.nodes.get("ImageBlur").cls
    image = torch.rand(1, 6, 6, 3)

    class PackBlur(post.Blur):
        """A pack's node built on the core one, with its own method."""

        FUNCTION = "soften"

        def soften(self, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
            return (self_blur(image, blur_radius, sigma) * 0.5,)

    def self_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
        return served().execute(image, radius, sigma)[0]

    assert issubclass(PackBlur, served) and isinstance(PackBlur(), post.ImageBlur)
    assert post.Blur is post.ImageBlur is served
    (half,) = PackBlur.execute(image=image, blur_radius=2, sigma=1.0)
    assert torch.allclose(half, post.Blur.execute(image, 2, 1.0)[0] * 0.5)

    primitive = _module("comfy_extras.nodes_primitive")

    class PlusOne(primitive.Int):
        """Like tests/compat/packs/basic_pack: overrides the method the server calls."""

        def execute(self, value: int) -> tuple[int]:
            (result,) = super().execute(value)
            return (result + 1,)

    assert PlusOne().execute(4) == (5,)
    assert getattr(PlusOne(), PlusOne.FUNCTION)(value=1) == (2,)
