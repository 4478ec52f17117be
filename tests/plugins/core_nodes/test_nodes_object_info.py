"""Our /object_info entries for the core nodes against the reference's node definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .node_helpers import start

FIXTURE = json.loads((Path(__file__).parent / "reference_object_info.json").read_text())
REFERENCE: dict[str, Any] = FIXTURE["nodes"]
FIELDS = (
    "output",
    "output_name",
    "output_is_list",
    "is_input_list",
    "category",
    "output_node",
    "python_module",
)


def _expected_inputs(spec: dict[str, Any], listings: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, entries in spec.items():
        out[group] = {}
        for name, value in entries.items():
            if isinstance(value, list) and isinstance(value[0], dict) and "files_from" in value[0]:
                value = [listings[value[0]["files_from"]], *value[1:]]
            out[group][name] = value
    return out


@pytest.fixture
async def object_info(comfy_server: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style.safetensors").write_bytes(b"x")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "cat.png").write_bytes(b"x")
    (tmp_path / "input" / "notes.txt").write_bytes(b"x")
    server = await comfy_server(plugins=["core_nodes", "models"])
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    listings = {
        "checkpoints": ["tiny.safetensors"],
        "loras": ["style.safetensors"],
        "vae": ["pixel_space"],
        "text_encoders": [],
        "diffusion_models": [],
        "input": ["cat.png"],
    }
    return info, listings


@pytest.mark.parametrize("name", sorted(REFERENCE))
async def test_object_info_matches_reference(name: str, object_info: Any) -> None:
    info, listings = object_info
    assert name in info, f"{name} is not registered"
    ours = info[name]
    expected = REFERENCE[name]
    assert ours["input"] == _expected_inputs(expected["input"], listings)
    for field in FIELDS:
        assert ours[field] == expected[field], field
    assert ours["input_order"] == {g: list(e) for g, e in expected["input"].items()}


def test_fixture_covers_the_issue_node_list() -> None:
    wanted = {
        "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "KSampler", "KSamplerAdvanced",
        "EmptyLatentImage", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "VAEDecodeTiled",
        "VAEEncodeTiled", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPLoader", "DualCLIPLoader",
        "UNETLoader", "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask", "ImageScale",
        "ImageScaleBy", "ImageInvert", "ImageBatch", "ImagePadForOutpaint", "ImageCrop", "EmptyImage",
        "RebatchImages", "RepeatLatentBatch", "LatentUpscale", "LatentUpscaleBy", "LatentComposite",
        "LatentFromBatch", "LatentBlend", "SetLatentNoiseMask", "InpaintModelConditioning",
        "ConditioningCombine", "ConditioningAverage", "ConditioningConcat", "ConditioningSetArea",
        "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningSetMask",
        "ConditioningZeroOut", "ConditioningSetTimestepRange", "SolidMask", "InvertMask", "MaskComposite",
        "CropMask", "GrowMask", "FeatherMask", "ImageToMask", "MaskToImage", "ThresholdMask",
        "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
    }  # fmt: skip
    assert wanted == set(REFERENCE)


async def test_display_names(comfy_server: Any) -> None:
    server = await start(comfy_server)
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    assert info["KSamplerAdvanced"]["display_name"] == "KSampler (Advanced)"
    assert info["CheckpointLoaderSimple"]["display_name"] == "Load Checkpoint"
    assert info["CLIPTextEncode"]["display_name"] == "CLIP Text Encode (Prompt)"
    assert info["PrimitiveStringMultiline"]["display_name"] == "String (Multiline)"
    assert info["SaveImage"]["output_node"] is True
    assert info["GrowMask"]["display_name"] == "Grow Mask"
    assert info["ImageToMask"]["display_name"] == "Convert Image to Mask"
    assert info["PrimitiveFloat"]["display_name"] == "Float"


async def test_server_answers_before_torch_is_needed() -> None:
    import subprocess
    import sys

    code = "import sys, plugins.core_nodes.plugin; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
