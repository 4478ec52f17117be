"""/object_info details of the core nodes the golden comparison does not spell out.

The full interface of every core class is compared with the reference's in
``test_golden_interface.py``; these tests name a few user-visible facts directly, so a failure
reads as the behaviour that broke.
"""

from __future__ import annotations

from typing import Any

from .node_helpers import start


async def test_display_names(comfy_server: Any) -> None:
    server = await start(comfy_server)
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    assert info["KSamplerAdvanced"]["display_name"] == "KSampler (Advanced)"
    assert info["CheckpointLoaderSimple"]["display_name"] == "Load Checkpoint"
    assert info["CLIPTextEncode"]["display_name"] == "CLIP Text Encode (Prompt)"
    assert info["PrimitiveStringMultiline"]["display_name"] == "Input Text"
    assert info["LoraLoader"]["display_name"] == "Load LoRA (Model and CLIP)"
    assert info["LoraLoaderModelOnly"]["display_name"] == "Load LoRA"
    assert info["GrowMask"]["display_name"] == "Grow Mask"
    assert info["ImageToMask"]["display_name"] == "Convert Image to Mask"
    assert info["PrimitiveFloat"]["display_name"] == "Float"
    # The reference's schema names none for these: null, and the frontend shows the class name.
    assert info["BasicScheduler"]["display_name"] is None
    assert info["SamplerCustomAdvanced"]["display_name"] is None


async def test_save_nodes_pass_their_images_on(comfy_server: Any) -> None:
    server = await start(comfy_server)
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    for name in ("SaveImage", "PreviewImage"):
        assert info[name]["output_node"] is True
        assert (info[name]["output"], info[name]["output_name"]) == (["IMAGE"], ["images"])


async def test_server_answers_before_torch_is_needed() -> None:
    import subprocess
    import sys

    code = "import sys, plugins.core_nodes.plugin; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
