"""The environment packs assume: torchvision (beside our CPU torch), transformers and the reference's
runtime requirements import and work, in a fresh process and in a real server running a pack."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.helpers import ROOT, LauncherServer, executed, of_type, run_prompt

try:
    import pytest_asyncio

    module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")
except (ImportError, TypeError):  # pragma: no cover
    raise

ENV_PACKS = Path(__file__).resolve().parent / "env_packs"

# Runs in a fresh interpreter that has done only what our server does first: import kernel.
# Every expected value in the tests below is worked out by hand from these inputs.
PROBE = r"""
import json
import kernel  # noqa: F401 - our setup, as in the server
import torch
import torchvision
import torchvision.transforms.functional as TF
from torchvision.ops import nms, roi_align, roi_pool
from transformers import CLIPTextModel

boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
grid = torch.arange(16.0).reshape(1, 1, 4, 4)  # value = 4 * y + x
rois = lambda *box: [torch.tensor([box], dtype=torch.float32)]

pooled_input = grid.clone().requires_grad_()
pooled = roi_pool(pooled_input, rois(0, 0, 3, 3), output_size=2)
pooled.sum().backward()
aligned_input = grid.clone().requires_grad_()
roi_align(aligned_input, rois(0, 0, 2, 2), output_size=1, spatial_scale=1.0, sampling_ratio=1).sum().backward()

print(json.dumps({
    "nms_05": nms(boxes, scores, 0.5).tolist(),
    "nms_07": nms(boxes, scores, 0.7).tolist(),
    "nms_empty": nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist(),
    "align_center": roi_align(grid, rois(0, 0, 2, 2), output_size=1, spatial_scale=1.0, sampling_ratio=1).tolist(),
    "align_aligned": roi_align(grid, rois(0, 0, 2, 2), output_size=2, spatial_scale=1.0, sampling_ratio=1,
                               aligned=True).tolist(),
    "align_scaled": roi_align(grid, torch.tensor([[0.0, 1, 1, 5, 5]]), output_size=1, spatial_scale=0.5,
                              sampling_ratio=2).tolist(),
    "align_grad": aligned_input.grad.tolist(),
    "pool": pooled.tolist(),
    "pool_grad": pooled_input.grad.tolist(),
    "hflip": TF.hflip(grid)[0, 0, 0].tolist(),
    "resized": list(TF.resize(grid, [2, 2], antialias=False).shape),
    "clip": CLIPTextModel.__name__,
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nms_keeps_the_best_box_of_each_overlapping_group(probe: dict[str, Any]) -> None:
    # Box 3 (0.95) equals box 0 (IoU 1) and overlaps box 1 by 81 / 119 = 0.68; box 2 is apart.
    assert probe["nms_05"] == [3, 2]
    # At 0.7 the 0.68 overlap survives: kept in descending score order.
    assert probe["nms_07"] == [3, 1, 2]
    assert probe["nms_empty"] == []


def test_roi_align_samples_bilinearly(probe: dict[str, Any]) -> None:
    # One sample at the centre (1, 1) of the 2x2 box.
    assert probe["align_center"] == [[[[5.0]]]]
    # aligned=True shifts by half a pixel: the 2x2 bins sample the pixel centres 0, 1, 4, 5.
    assert probe["align_aligned"] == [[[[0.0, 1.0], [4.0, 5.0]]]]
    # Box (1, 1, 5, 5) at scale 0.5 is (0.5, 0.5, 2.5, 2.5): 2x2 samples at y, x in {1, 2} of
    # 4y + x average to 7.5.
    assert probe["align_scaled"] == [[[[7.5]]]]
    # The one sample sits exactly on pixel (1, 1): all the gradient goes there.
    assert probe["align_grad"] == [[[[0.0] * 4, [0.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]]]


def test_roi_pool_takes_the_max_of_each_bin(probe: dict[str, Any]) -> None:
    assert probe["pool"] == [[[[5.0, 7.0], [13.0, 15.0]]]]
    # The gradient of each bin goes to its maximum: pixels (1, 1), (1, 3), (3, 1), (3, 3).
    assert probe["pool_grad"] == [[[[0.0] * 4, [0.0, 1.0, 0.0, 1.0], [0.0] * 4, [0.0, 1.0, 0.0, 1.0]]]]


def test_transforms_and_transformers_import(probe: dict[str, Any]) -> None:
    assert probe["hflip"] == [3.0, 2.0, 1.0, 0.0]
    assert probe["resized"] == [1, 1, 2, 2]
    assert probe["clip"] == "CLIPTextModel"


def test_the_hook_costs_nothing_until_torchvision_is_imported() -> None:
    """Importing the kernel (every server does) must not import torch: only torchvision does."""
    code = (
        "import sys, kernel, inspect; import json; print(json.dumps(['torch' in sys.modules]))"
    )
    code += "; import torchvision.extension as e; print(json.dumps([len(inspect.getsource(e)) > 0]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[false]", "[true]"]


def test_unsupported_operator_names_itself() -> None:
    """In this (test) process conftest installed the hook: the ops we do not compute say so."""
    import torch
    import torchvision  # noqa: F401 - registers the operators

    from kernel.torchvision_ops import ensure_torchvision_ops, substitutes_active

    if not substitutes_active():
        pytest.skip("torchvision's compiled operators load here; no substitutes in use")
    assert ensure_torchvision_ops() is True  # idempotent: a second call changes nothing
    with pytest.raises(NotImplementedError, match="torchvision::ps_roi_align"):
        torch.ops.torchvision.ps_roi_align(torch.zeros(1, 4, 4, 4), torch.zeros(1, 5), 1.0, 2, 2, 1)


@module_fixture
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    base = tmp_path_factory.mktemp("environment")
    args = ["--base-directory", str(base / "home"), "--custom-nodes-dir", str(ENV_PACKS), "--cpu"]
    srv = LauncherServer(args, base / "server.log")
    try:
        await srv.wait_ready(timeout=180)
        yield srv
    finally:
        await srv.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_pack_importing_the_reference_requirements_loads_and_runs(server: LauncherServer) -> None:
    assert "(IMPORT FAILED)" not in server.log, server.log
    status, info = await server.json("GET", "/object_info/EnvProbe")
    assert status == 200
    assert info["EnvProbe"]["python_module"] == "custom_nodes.env_pack"

    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "EnvProbe", "inputs": {"image": ["1", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt, timeout=120)
    await ws.close()
    assert of_type(messages, "execution_success"), messages
    facts = executed(messages)["2"]["facts"][0]
    # Boxes 0 and 1 overlap by 15.6 / 16 > 0.5; box 2 stands alone.
    assert facts["kept"] == [0, 2]
    assert facts["brownian_shape"] == [1, 1]
    assert facts["steps"] == 3
    assert facts["cpus"] is True and facts["spandrel"] is True
    assert facts["torchvision"].count(".") == 2


def test_pack_bench_reports_imports_classes_js_and_smoke(tmp_path: Path) -> None:
    """bench/packs.py against the repository's own test packs, through a real server."""
    smoke = {
        "_comment": "ignored",
        "basic_pack": {
            "1": {"class_type": "BasicDouble", "inputs": {"value": 5}},
            "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
            # The bench's own tiny checkpoint: validation rejects a name the server does not list.
            "3": {"class_type": "BasicModels", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
            "4": {"class_type": "BasicShow", "inputs": {"value": ["3", 0]}},
        },
        # Runs and raises: the bench names the node, its class and the exception.
        "anytype_pack": {
            "1": {"class_type": "PrimitiveString", "inputs": {"value": "x"}},
            "7": {"class_type": "AnyFail", "inputs": {"anything": ["1", 0]}},
        },
        "broken_syntax": {"offline": "every node needs a model nobody can build"},
        # Missing the required input "a": the server rejects it, and the bench says which node.
        "single_file_pack.py": {
            "1": {"class_type": "SingleAsyncAdd", "inputs": {"b": 1}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        },
        "broken_import.py": {"1": {"class_type": "BasicDouble", "inputs": {"value": 1}}},
    }
    (tmp_path / "smoke.json").write_text(json.dumps(smoke))
    only = ["anytype_pack", "basic_pack", "broken_import.py", "broken_syntax", "single_file_pack.py"]
    command = [sys.executable, str(ROOT / "bench" / "packs.py"), str(ROOT / "tests" / "compat" / "packs")]
    command += [
        "--only",
        *only,
        "--smoke",
        str(tmp_path / "smoke.json"),
        "--json",
        str(tmp_path / "out.json"),
    ]
    command += ["--markdown", "--timeout", "60", "--startup-timeout", "180"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert sorted(results) == sorted(only)

    basic = results["basic_pack"]
    assert basic["imported"] and basic["classes"] >= 5
    assert (basic["js_listed"], basic["js_served"]) == (1, 1)
    assert (basic["smoke_ok"], basic["smoke"]) == (True, "ok")

    broken = results["broken_import.py"]
    assert not broken["imported"]
    assert broken["error"] == "ModuleNotFoundError: No module named 'this_module_does_not_exist_anywhere'"
    assert broken["smoke"] == "not run (pack did not import)"
    assert results["broken_syntax"]["error"].startswith("SyntaxError")
    # A documented reason shows as given, and the pack does not count as having a workflow.
    assert results["broken_syntax"]["smoke"] == "no offline workflow: every node needs a model nobody can build"
    anytype = results["anytype_pack"]
    assert not anytype["smoke_ok"]
    assert re.fullmatch(
        r"failed: node 7 \(AnyFail\): ValueError: cannot use x \[at anytype_pack/__init__\.py:\d+ in run\]",
        anytype["smoke"],
    ), anytype["smoke"]

    single = results["single_file_pack.py"]
    assert single["imported"] and single["classes"] == 1
    assert (
        not single["smoke_ok"]
        and single["smoke"].startswith("failed: rejected:")
        and "SingleAsyncAdd" in single["smoke"]
    )

    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("| pack | commit | loads |")
    assert any(line.startswith("| basic_pack |") and "| ok |" in line for line in lines)
    assert broken["blocker"] == "environment: this_module_does_not_exist_anywhere"
    assert lines[-1] == "3/5 packs imported, 1/4 smoke workflows ran"


@pytest.mark.parametrize(
    ("error", "blocker"),
    [
        ("ModuleNotFoundError: No module named 'comfy.controlnet'", "comfykernel: comfy.controlnet"),
        # The reference puts comfy/ on sys.path: its modules are importable by their short names.
        ("ModuleNotFoundError: No module named 'model_management'", "comfykernel: model_management"),
        ("ModuleNotFoundError: No module named 'tensorrt'", "environment: tensorrt"),
        (
            "ImportError: cannot import name 'StyleModel' from 'comfy.sd' (/x/sd.py)",
            "comfykernel: comfy.sd.StyleModel",
        ),
        ("ImportError: cannot import name 'Thing' from 'cv2' (/x/cv2.py)", "environment: cv2.Thing"),
        (
            "AttributeError: module 'comfy.ldm.models' has no attribute 'autoencoder'",
            "comfykernel: comfy.ldm.models.autoencoder",
        ),
        ("SyntaxError: invalid syntax (__init__.py, line 3)", ""),
    ],
)
def test_pack_bench_routes_import_errors(error: str, blocker: str) -> None:
    assert _bench_module().blocker_of(error) == blocker


def _bench_module() -> Any:
    bench = sys.modules.get("bench_packs")
    if bench is None:  # bench/ is scripts, not a package: load the file under a name of its own
        spec = importlib.util.spec_from_file_location("bench_packs", ROOT / "bench" / "packs.py")
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        sys.modules["bench_packs"] = bench  # dataclasses look their module up there
        spec.loader.exec_module(bench)
    return bench


def test_pack_bench_names_the_innermost_frame_of_an_execution_error() -> None:
    bench = _bench_module()
    payload = {
        "node_id": "5",
        "node_type": "KSampler",
        "exception_type": "AttributeError",
        "exception_message": "'X' object has no attribute 'copy'\nmore detail",
        "traceback": [
            f'  File "{ROOT}/plugins/core_nodes/ksampler.py", line 10, in run\n    x()\n',
            '  File "/tmp/b/custom_nodes/SomePack/sub/sampling.py", line 718, in get_resized_cond\n',
        ],
    }
    assert bench.describe_execution_error(payload) == (
        "failed: node 5 (KSampler): AttributeError: 'X' object has no attribute 'copy'"
        " [at SomePack/sub/sampling.py:718 in get_resized_cond]"
    )
    payload["traceback"] = payload["traceback"][:1]
    assert bench.describe_execution_error(payload).endswith("[at plugins/core_nodes/ksampler.py:10 in run]")
    del payload["traceback"]
    assert bench.describe_execution_error(payload).endswith("'copy'")


def test_pack_bench_models_read_back_as_their_formats(tmp_path: Path) -> None:
    """The bench's stand-ins load with the readers the packs use (no pack needed for these)."""
    import gguf
    import numpy as np
    import onnxruntime
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("bench_pack_models", ROOT / "bench" / "pack_models.py")
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    written = models.write_models(tmp_path)
    assert "sam2" not in written  # built only when its pack is under test

    checkpoint = load_file(str(written["checkpoint"]))
    unet = {k for k in checkpoint if k.startswith("model.diffusion_model.")}
    assert unet and any(k.startswith("cond_stage_model.") for k in checkpoint)
    reader = gguf.GGUFReader(str(written["gguf_unet"]))
    assert {t.name for t in reader.tensors} == {k.removeprefix("model.diffusion_model.") for k in unet}
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "sd1"
    # The linear weights are Q8_0, so a smoke run dequantizes; they read back as the checkpoint's.
    q8 = gguf.GGMLQuantizationType.Q8_0
    for tensor in reader.tensors:
        original = checkpoint["model.diffusion_model." + tensor.name].numpy()
        assert tensor.tensor_type == (q8 if original.ndim == 2 else gguf.GGMLQuantizationType.F32)
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(original.shape)
        assert np.abs(values - original).max() <= np.abs(original).max() / 127 + 1e-6

    session = onnxruntime.InferenceSession(str(written["tagger"]))
    image = np.random.default_rng(0).random((1, models.TAGGER_SIZE, models.TAGGER_SIZE, 3), dtype=np.float32)
    (scores,) = session.run(None, {session.get_inputs()[0].name: image})
    rows = written["tagger"].with_suffix(".csv").read_text().splitlines()
    assert scores.shape == (1, len(rows) - 1)  # one score per tag line under the header

    lora = load_file(str(written["lora"]))
    assert any(k.startswith("lora_unet_") for k in lora) and any(k.startswith("lora_te_") for k in lora)
    assert (tmp_path / "models" / "upscale_models" / models.UPSCALER).is_file()
    assert "wd14_tagger: wd14_tagger" in models.extra_model_paths(tmp_path)
