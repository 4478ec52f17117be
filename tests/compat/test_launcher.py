"""Legacy packs load and run over HTTP + WebSocket in a server started with ``main.py`` flags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.compat.helpers import PACKS, LauncherServer, executed, executing, of_type, run_prompt

try:
    import pytest_asyncio

    module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")
    module_loop = pytest.mark.asyncio(loop_scope="module")
except (ImportError, TypeError):  # pragma: no cover
    raise

pytestmark = module_loop

YAML_PACK = """
class YamlEcho:
    CATEGORY = "compat"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "y"})}}

    def run(self, text):
        return ("yaml:" + text,)


NODE_CLASS_MAPPINGS = {"YamlEcho": YamlEcho}
"""


@module_fixture
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LauncherServer]:
    base = tmp_path_factory.mktemp("launcher")
    (base / "extra" / "ckpts" / "sub").mkdir(parents=True)
    (base / "extra" / "ckpts" / "sub" / "tiny.safetensors").write_bytes(b"not really a model")
    (base / "extra" / "nodes").mkdir()
    (base / "extra" / "nodes" / "yaml_pack.py").write_text(YAML_PACK)
    yaml_file = base / "extra" / "extra_model_paths.yaml"
    yaml_file.write_text("mine:\n  checkpoints: ckpts\n  custom_nodes: nodes\n")
    args = [
        "--base-directory", str(base / "home"),
        "--output-directory", str(base / "out"),
        "--extra-model-paths-config", str(yaml_file),
        "--custom-nodes-dir", str(PACKS),
        "--cpu",
        "--cache-lru", "100",
        "--lowvram",
        "--dont-print-server",
        "--some-future-flag",
    ]  # fmt: skip
    srv = LauncherServer(args, base / "server.log")
    try:
        await srv.wait_ready()
        yield srv
    finally:
        await srv.stop()


async def test_report_names_failed_packs_and_server_runs(server: LauncherServer):
    log = server.log
    assert "Import times for custom nodes:" in log
    failed = [line for line in log.splitlines() if "(IMPORT FAILED)" in line]
    assert any(line.endswith("broken_syntax") for line in failed), log
    assert any(line.endswith("broken_import.py") for line in failed), log
    assert not any("basic_pack" in line for line in failed)
    assert "--lowvram has no effect" in log and "'--some-future-flag'" in log
    # A clash names both sources.
    assert "node 'KSampler' of plugin legacy:basic_pack is already registered by plugin core_nodes" in log


async def test_object_info_lists_pack_nodes(server: LauncherServer):
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    for name in (
        "BasicDouble", "BasicLazySwitch", "ExpandChain", "V3Scale", "V3AsyncWait",
        "SingleAsyncAdd", "EntryPointEcho", "YamlEcho",
    ):  # fmt: skip
        assert name in info, name
    assert info["BasicDouble"]["display_name"] == "Double It (basic pack)"
    assert info["BasicDouble"]["python_module"] == "custom_nodes.basic_pack"
    assert info["BasicPlusOne"]["python_module"] == "custom_nodes.basic_pack"
    assert info["V3Scale"]["display_name"] == "Scale (V3 pack)"
    # Base nodes win clashes; their provenance is untouched by the pack subclassing one.
    assert info["KSampler"]["python_module"] == "nodes"
    assert not info["PrimitiveInt"]["python_module"].startswith("custom_nodes")
    assert info["BasicModels"]["input"]["required"]["ckpt_name"][0] == ["sub/tiny.safetensors"]
    assert "this_module_does_not_exist_anywhere" not in str(info)


async def test_pack_routes_web_directory_and_locales(server: LauncherServer):
    for path in ("/basic_pack/hello", "/api/basic_pack/hello"):
        status, body = await server.json("GET", path)
        assert (status, body) == (200, {"hello": "basic_pack", "nodes": True})
    status, listed = await server.json("GET", "/extensions")
    assert "/extensions/basic_pack/basic.js" in listed
    async with server.get("/extensions/basic_pack/basic.js") as resp:
        assert resp.status == 200
        assert "basic_pack.hello" in await resp.text()
    status, i18n = await server.json("GET", "/i18n")
    assert i18n["en"]["basic_pack"]["greeting"] == "Hello from basic_pack"


async def test_v1_nodes_progress_and_send_sync(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "BasicDouble", "inputs": {"value": 5}},
        "2": {"class_type": "BasicPlusOne", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "BasicProgress", "inputs": {"steps": 3}},
        "4": {"class_type": "BasicShow", "inputs": {"value": ["2", 0]}},
        "5": {"class_type": "BasicShow", "inputs": {"value": ["3", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    assert of_type(messages, "execution_success")
    assert executed(messages)["4"] == {"value": [11]}
    assert executed(messages)["5"] == {"value": [3]}
    progress = [(d["value"], d["max"]) for d in of_type(messages, "progress") if d["node"] == "3"]
    # Updates may be coalesced by the kernel's throttling; the last one always arrives.
    assert progress and progress[-1] == (3, 3) and progress == sorted(progress)
    assert of_type(messages, "basic_pack.done") == [{"node": "3", "steps": 3}]
    assert of_type(messages, "binary") == [b"\x00\x00\x00\x03basic_pack"]


async def test_lazy_inputs_evaluate_only_what_is_asked(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "BasicDouble", "inputs": {"value": 1}},
        "2": {"class_type": "BasicDouble", "inputs": {"value": 20}},
        "3": {"class_type": "BasicLazySwitch", "inputs": {"use_a": False, "a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "BasicShow", "inputs": {"value": ["3", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    assert executed(messages)["4"] == {"value": [40]}
    assert "2" in executing(messages) and "1" not in executing(messages)


async def test_execution_blocker_skips_downstream(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "BasicGate", "inputs": {"value": 3, "open": False}},
        "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    assert of_type(messages, "execution_success") and not of_type(messages, "execution_error")
    assert "2" not in executed(messages)


async def test_graph_builder_expansion_and_prestartup(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "ExpandChain", "inputs": {"value": 1, "times": 3}},
        "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "ExpandPrestartup", "inputs": {}},
        "4": {"class_type": "BasicShow", "inputs": {"value": ["3", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    assert executed(messages)["2"] == {"value": [4]}
    assert executed(messages)["4"] == {"value": ["ran"]}
    # The expanded ExpandInc nodes ran under ephemeral ids.
    assert len([n for n in executing(messages) if n not in prompt]) == 3


async def test_v3_and_async_nodes(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "V3Scale", "inputs": {"value": 3, "factor": 2}},
        "2": {"class_type": "V3AsyncWait", "inputs": {"value": ["1", 0], "steps": 2}},
        "3": {"class_type": "SingleAsyncAdd", "inputs": {"a": ["2", 0], "b": 10}},
        "4": {"class_type": "BasicShow", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "EntryPointEcho", "inputs": {"text": "x"}},
        "6": {"class_type": "BasicShow", "inputs": {"value": ["5", 0]}},
        "7": {"class_type": "YamlEcho", "inputs": {"text": "z"}},
        "8": {"class_type": "BasicShow", "inputs": {"value": ["7", 0]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    outputs = executed(messages)
    assert outputs["4"] == {"value": [18]}  # (3*2 + 2) + 10
    assert outputs["1"] == {"text": ["1:6"]}
    assert outputs["6"] == {"value": ["ep:x"]} and outputs["8"] == {"value": ["yaml:z"]}
    progress = [(d["value"], d["max"]) for d in of_type(messages, "progress") if d["node"] == "2"]
    assert progress and progress[-1] == (2, 2)


async def test_validate_inputs_rejects(server: LauncherServer):
    for node, inputs, text in (
        ("BasicDouble", {"value": 13}, "13 is unlucky"),
        ("V3Scale", {"value": 1, "factor": 7}, "factor 7 is not allowed"),
    ):
        prompt = {
            "1": {"class_type": node, "inputs": inputs},
            "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
        }
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
        assert status == 400, body
        assert text in str(body["node_errors"]["1"])


async def test_is_changed_controls_reexecution(server: LauncherServer):
    client_id, ws = await server.ws()

    def prompt(token: str) -> dict:
        return {
            "1": {"class_type": "BasicCounter", "inputs": {"token": token}},
            "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
        }

    first = await run_prompt(server, ws, client_id, prompt("a"))
    again = await run_prompt(server, ws, client_id, prompt("a"))
    changed = await run_prompt(server, ws, client_id, prompt("b"))
    await ws.close()
    assert "1" in executing(first)
    assert "1" not in executing(again) and "1" in of_type(again, "execution_cached")[0]["nodes"]
    assert "1" in executing(changed)
    assert executed(changed)["2"]["value"][0] == executed(first)["2"]["value"][0] + 1


async def test_folder_paths_lookups(server: LauncherServer):
    client_id, ws = await server.ws()
    prompt = {
        "1": {"class_type": "BasicModels", "inputs": {"ckpt_name": "sub/tiny.safetensors"}},
        "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "BasicShow", "inputs": {"value": ["1", 1]}},
    }
    messages = await run_prompt(server, ws, client_id, prompt)
    await ws.close()
    full = Path(executed(messages)["2"]["value"][0])
    assert full.name == "tiny.safetensors" and full.read_bytes() == b"not really a model"
    assert executed(messages)["3"]["value"][0].endswith("out")
