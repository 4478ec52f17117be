"""PreviewAny ("Preview as Text") and the spandrel upscale nodes, against the reference's interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.nodes import upscale
from plugins.core_nodes.nodes.preview import as_text

from .node_helpers import messages, run_prompt

# The reference's entries for these three nodes (from its /object_info).
GOLDEN = json.loads((Path(__file__).parent / "reference_preview_upscale.json").read_text())
NAMES = ("PreviewAny", "UpscaleModelLoader", "ImageUpscaleWithModel")
FIELDS = ("input", "input_order", "output", "output_name", "output_is_list", "is_input_list")
FIELDS += ("category", "output_node", "python_module", "display_name")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Values:
    """An inline node pack whose node outputs a dict, a list or a tensor, by name."""

    class Emit:
        RETURN_TYPES = ("*",)
        FUNCTION = "emit"
        CATEGORY = "test"

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"kind": (["dict", "list", "tensor", "tensor_dict"],)}}

        def emit(self, kind: str) -> tuple[Any]:
            values = {
                "dict": {"a": [1, 2], "b": "x"},
                "list": [1.5, None, True],
                "tensor": torch.arange(2000),
                "tensor_dict": {"samples": torch.zeros(1, 2)},
            }
            return (values[kind],)

    @staticmethod
    def register_nodes(register: Any) -> None:
        register("TestEmit", _Values.Emit)


class _Hooks:
    from kernel import hookimpl

    @staticmethod
    @hookimpl
    def register_nodes(register: Any) -> None:
        _Values.register_nodes(register)


def tiny_esrgan(scale: int = 2) -> dict[str, torch.Tensor]:
    """A randomly initialised ESRGAN (RRDBNet) state dict in the layout of real ESRGAN files."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict()


async def test_object_info_is_the_reference_interface(comfy_server: Any, tmp_path: Path) -> None:
    (tmp_path / "models" / "upscale_models").mkdir(parents=True)
    (tmp_path / "models" / "upscale_models" / "x2.safetensors").write_bytes(b"x")
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    for name in NAMES:
        expected = dict(GOLDEN[name])
        if name == "UpscaleModelLoader":
            expected["input"] = {
                "required": {"model_name": ["COMBO", {"multiselect": False, "options": ["x2.safetensors"]}]}
            }
        for field in FIELDS:
            assert info[name][field] == expected[field], (name, field)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (7, "7"),
        (2.5, "2.5"),
        (False, "False"),
        (None, "None"),
        ({"a": [1, 2]}, '{\n    "a": [\n        1,\n        2\n    ]\n}'),
    ],
)
def test_text_of_plain_values(value: Any, text: str) -> None:
    assert as_text(value) == text


def test_tensors_print_six_items_at_each_end_without_changing_torch_defaults() -> None:
    text = as_text(torch.arange(2000))
    assert text.startswith("tensor([   0,    1,    2,    3,    4,    5,  ...")
    assert text.endswith("1995, 1996, 1997, 1998,\n        1999])")
    # The server's own printing keeps torch's three edge items.
    assert str(torch.arange(2000)).startswith("tensor([   0,    1,    2,  ...")


async def test_preview_any_through_the_server(comfy_server: Any) -> None:
    server = await comfy_server(plugins=["core_nodes", ("test_values", _Hooks)])
    cases = {
        "1": ({"class_type": "PrimitiveString", "inputs": {"value": "hello"}}, "hello"),
        "2": ({"class_type": "PrimitiveInt", "inputs": {"value": 42}}, "42"),
        "3": (
            {"class_type": "TestEmit", "inputs": {"kind": "dict"}},
            json.dumps({"a": [1, 2], "b": "x"}, indent=4),
        ),
        "4": ({"class_type": "TestEmit", "inputs": {"kind": "list"}}, "[\n    1.5,\n    null,\n    true\n]"),
        "5": (
            {"class_type": "TestEmit", "inputs": {"kind": "tensor_dict"}},
            "{'samples': tensor([[0., 0.]])}",
        ),
    }
    prompt: dict[str, Any] = {}
    for node_id, (source, _) in cases.items():
        prompt[node_id] = source
        prompt[f"p{node_id}"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    frames = await run_prompt(server, prompt)
    shown = {m["node"]: m["output"] for m in messages(frames, "executed")}
    for node_id, (_, text) in cases.items():
        assert shown[f"p{node_id}"] == {"text": [text]}, node_id


def test_tiling_blends_back_to_the_untiled_result() -> None:
    """A per-pixel function gives the same picture tiled as whole (seams blend away exactly)."""
    image = torch.rand(2, 3, 70, 45)

    def double(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") * 0.5

    tiled = upscale.tiled_upscale(image, double, 2, tile=32, overlap=8)
    assert torch.allclose(tiled, double(image), atol=1e-6)
    assert upscale.tile_steps(45, 70, 32, 8) == 3 * 2


def test_upscale_with_model_equals_spandrel(tmp_path: Path) -> None:
    descriptor = upscale.load_upscale_model(tiny_esrgan())
    assert descriptor.scale == 2
    image = torch.rand(1, 24, 40, 3)
    (ours,) = upscale.ImageUpscaleWithModel().upscale(descriptor, image)
    with torch.inference_mode():
        direct = descriptor(image.movedim(-1, -3)).clamp(0, 1).movedim(-3, -1)
    assert ours.shape == (1, 48, 80, 3)
    assert torch.allclose(ours, direct, atol=1e-5)


def test_a_non_upscale_state_dict_is_refused() -> None:
    with pytest.raises(upscale.UpscaleModelError, match="Not an upscale model"):
        upscale.load_upscale_model({"x.weight": torch.zeros(2, 2)})


async def test_upscale_workflow_through_the_server(comfy_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    save_file(tiny_esrgan(), str(folder / "tiny_x2.safetensors"))
    server = await comfy_server(plugins=["core_nodes", "models"])
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_x2.safetensors"}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    progress = [m for m in messages(frames, "progress") if m["node"] == "3"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 1
    from PIL import Image

    (saved,) = (tmp_path / "output").glob("up_*.png")
    assert Image.open(saved).size == (64, 32)


class _FakeUpscaler(torch.nn.Module):
    """A x2 "model" that runs out of memory on tiles wider than ``limit`` pixels."""

    scale = 2

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.model = self
        self.tiles: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles.append(x.shape[-1])
        if x.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("tile too large")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


def test_out_of_memory_halves_the_tile_until_it_fits() -> None:
    image = torch.rand(1, 600, 600, 3)
    fake = _FakeUpscaler(limit=256)
    (out,) = upscale.ImageUpscaleWithModel().upscale(fake, image)
    assert out.shape == (1, 1200, 1200, 3)
    assert fake.tiles[0] == 512 and max(fake.tiles[1:]) == 256
    assert torch.allclose(out, image.repeat_interleave(2, 1).repeat_interleave(2, 2))
    with pytest.raises(torch.OutOfMemoryError):
        upscale.ImageUpscaleWithModel().upscale(_FakeUpscaler(limit=100), image)


def test_the_upscaled_image_can_be_changed_in_place_by_later_nodes() -> None:
    (out,) = upscale.ImageUpscaleWithModel().upscale(_FakeUpscaler(limit=512), torch.rand(1, 8, 8, 3))
    out[:, :2] = 0.0  # an inference-mode tensor would refuse this
    assert out[:, :2].eq(0).all() and not out.requires_grad
