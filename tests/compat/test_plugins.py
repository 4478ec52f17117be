"""Each pack is a named plugin; the shims exist only while comfy_compat is enabled; the kernel seam."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel import StartupError, hookimpl
from kernel.plugins import DiscoveredPlugin
from plugins.comfy_compat.shimming import SHIMS_DIR
from tests.compat.helpers import EP_SITE, PACKS, ROOT

PLUGINS = ["comfy_compat", "models", "core_nodes", "frontend_ext"]


async def test_each_pack_is_a_plugin(comfy_server):
    server = await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])
    records = server.kernel.plugin_records
    assert records["legacy:basic_pack"].status == "enabled"
    assert records["legacy:basic_pack"].source == "legacy"
    assert "register_nodes" in records["legacy:basic_pack"].hooks
    assert records["legacy:single_file_pack"].status == "enabled"
    assert records["legacy:broken_syntax"].status == "failed"
    assert "SyntaxError" in records["legacy:broken_syntax"].error
    assert records["legacy:broken_import"].status == "failed"
    assert "legacy:ignored_pack" not in records and "legacy:ignored_pack.disabled" not in records
    assert server.kernel.has_plugin("legacy:v3_pack")
    assert server.kernel.nodes.get("BasicDouble").plugin == "legacy:basic_pack"
    assert server.kernel.nodes.get("KSampler").plugin == "core_nodes"


async def test_disable_one_pack(comfy_server):
    server = await comfy_server(
        plugins=PLUGINS, custom_nodes_dir=[str(PACKS)], disabled=["legacy:basic_pack", "legacy:expand_pack"]
    )
    records = server.kernel.plugin_records
    assert records["legacy:basic_pack"].status == "blocked"
    assert not server.kernel.has_plugin("legacy:basic_pack")
    status, info = await server.json("GET", "/object_info")
    assert "BasicDouble" not in info and "V3Scale" in info
    # Not even imported: its prestartup script did not run either.
    assert "custom_nodes.basic_pack" not in sys.modules
    status, _ = await server.json("GET", "/basic_pack/hello")
    assert status == 404


async def test_disable_all_custom_nodes(comfy_server):
    server = await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)], disable_all_custom_nodes=True)
    assert not [name for name in server.kernel.plugin_records if name.startswith("legacy:")]
    assert "BasicDouble" not in server.kernel.nodes


async def test_shims_exist_only_while_enabled(comfy_server, tmp_path: Path):
    server = await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS)])
    folder_paths = importlib.import_module("folder_paths")
    assert folder_paths.get_output_directory() == str(server.kernel.settings.output_path)
    nodes = importlib.import_module("nodes")
    assert nodes.NODE_CLASS_MAPPINGS["BasicDouble"] is server.kernel.nodes.get("BasicDouble").cls
    mm = importlib.import_module("comfy.model_management")
    from kernel.progress import Interrupted

    assert mm.InterruptProcessingException is Interrupted
    await server.stop()
    for name in (
        "folder_paths",
        "server",
        "nodes",
        "comfy",
        "comfy.utils",
        "comfy_api",
        "custom_nodes.basic_pack",
    ):
        assert name not in sys.modules, name
    assert str(SHIMS_DIR) not in sys.path
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("folder_paths")


async def test_no_shims_without_the_plugin(comfy_server):
    # A kernel that owned the shims removes them when it stops (even ones a leaked kernel put there).
    owner = await comfy_server(plugins=["comfy_compat", "models"])
    await owner.stop()
    await comfy_server(plugins=["models"], custom_nodes_dir=[str(PACKS)])
    assert "folder_paths" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("comfy_execution.graph")


async def test_prompt_server_on_prompt_handlers(comfy_server, tmp_path: Path):
    pack = tmp_path / "nodes_dir" / "rewriter.py"
    pack.parent.mkdir()
    pack.write_text(
        "from server import PromptServer\n"
        "def rewrite(body):\n"
        "    body['prompt']['1']['inputs']['value'] = 4\n"
        "    return body\n"
        "def broken(body):\n"
        "    raise ValueError('handlers that fail are skipped')\n"
        "PromptServer.instance.add_on_prompt_handler(broken)\n"
        "PromptServer.instance.add_on_prompt_handler(rewrite)\n"
        "NODE_CLASS_MAPPINGS = {}\n"
    )
    server = await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(PACKS), str(pack.parent)])
    prompt = {
        "1": {"class_type": "BasicDouble", "inputs": {"value": 13}},
        "2": {"class_type": "BasicShow", "inputs": {"value": ["1", 0]}},
    }
    # 13 would fail VALIDATE_INPUTS; the pack's handler rewrote it first.
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 200, body


def test_plugins_list_shows_packs(tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EP_SITE), str(ROOT)]))
    env.pop("COMFYKERNEL_PLUGINS", None)
    # The installed console script, next to this interpreter (PATH may not hold the venv).
    base = [str(Path(sys.executable).parent / "comfykernel"), "plugins"]
    args = ["list", "--base-directory", str(tmp_path), "--custom-nodes-dir", str(PACKS)]
    out = subprocess.run(base + args, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    lines = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line and not line.startswith(" ")
    }
    assert lines["legacy:basic_pack"] == "enabled"
    assert lines["legacy:compat_ep_pack"] == "enabled"
    assert lines["legacy:broken_syntax"] == "failed"
    out = subprocess.run(
        base + ["--disable", "legacy:basic_pack"] + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert any(
        line.split()[:2] == ["legacy:basic_pack", "blocked"] for line in out.splitlines() if line.strip()
    )


class _Found:
    """A node class a discovered plugin contributes."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (1,)


class _FoundPlugin:
    @hookimpl
    def register_nodes(self, register, kernel):
        register("FoundNode", _Found)


class _Discoverer:
    @hookimpl
    def discover_plugins(self, kernel):
        # Discovery runs after the installed plugins registered their nodes.
        assert "Installed" in kernel.nodes
        return [
            DiscoveredPlugin("found:one", "test", "found.one", _FoundPlugin(), import_seconds=0.5),
            DiscoveredPlugin("found:broken", "test", "found.broken", error="ImportError: nope"),
            DiscoveredPlugin("found:off", "test", "found.off", _FoundPlugin()),
            DiscoveredPlugin("discoverer", "test", "found.clash", _FoundPlugin()),
        ]


class _Installed:
    @hookimpl
    def register_nodes(self, register):
        register("Installed", _Found)


def test_hook_discover_plugins(make_kernel):
    kernel = make_kernel(
        plugins=[("discoverer", _Discoverer()), ("installed", _Installed())], disabled=["found:off"]
    )
    records = kernel.plugin_records
    assert records["found:one"].status == "enabled" and records["found:one"].import_seconds == 0.5
    assert records["found:one"].hooks == ["register_nodes"]
    assert kernel.nodes.get("FoundNode").plugin == "found:one"
    assert records["found:broken"].status == "failed" and records["found:broken"].error == "ImportError: nope"
    assert records["found:off"].status == "blocked" and not kernel.has_plugin("found:off")
    # A name already taken keeps its original plugin.
    assert records["discoverer"].source == "inline"


def test_discovered_plugins_cannot_override_nodes_by_default(make_kernel):
    class Clashing:
        @hookimpl
        def discover_plugins(self):
            return [DiscoveredPlugin("found:clash", "test", "m", _InstalledAgain())]

    class _InstalledAgain:
        @hookimpl
        def register_nodes(self, register):
            register("Installed", _Found)

    with pytest.raises(StartupError, match="duplicate node name 'Installed'"):
        make_kernel(plugins=[("clashing", Clashing()), ("installed", _Installed())])


async def test_clash_between_packs_keeps_the_first(comfy_server, tmp_path: Path, caplog):
    folder = tmp_path / "clash_nodes"
    folder.mkdir()
    for name in ("a_pack", "b_pack"):
        (folder / f"{name}.py").write_text(
            "class Same:\n"
            "    RETURN_TYPES = ('STRING',)\n"
            "    FUNCTION = 'run'\n"
            "    @classmethod\n"
            "    def INPUT_TYPES(cls):\n"
            "        return {'required': {}}\n"
            f"    def run(self):\n        return ('{name}',)\n"
            "NODE_CLASS_MAPPINGS = {'SameNode': Same}\n"
        )
    caplog.set_level("WARNING", logger="comfykernel.compat")
    server = await comfy_server(plugins=["comfy_compat", "models"], custom_nodes_dir=[str(folder)])
    assert server.kernel.nodes.get("SameNode").plugin == "legacy:a_pack"
    assert (
        "node 'SameNode' of plugin legacy:b_pack is already registered by plugin legacy:a_pack" in caplog.text
    )


async def test_a_pack_with_a_bad_mapping_entry_does_not_stop_the_server(comfy_server, tmp_path: Path):
    # The reference loads what it can of such a pack; one bad entry must not refuse the start.
    folder = tmp_path / "packs"
    (folder / "odd_pack").mkdir(parents=True)
    (folder / "odd_pack" / "__init__.py").write_text(
        "class Good:\n"
        "    RETURN_TYPES = ('INT',)\n"
        "    FUNCTION = 'run'\n"
        "    CATEGORY = 'odd'\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    def run(self):\n"
        "        return (1,)\n"
        "def not_a_class():\n"
        "    pass\n"
        "NODE_CLASS_MAPPINGS = {'OddGood': Good, 'OddFunction': not_a_class, 7: Good, '': Good}\n"
    )
    server = await comfy_server(plugins=["comfy_compat"], custom_nodes_dir=[str(folder)])
    assert server.kernel.plugin_records["legacy:odd_pack"].status == "enabled"
    assert server.kernel.nodes.get("OddGood").plugin == "legacy:odd_pack"
    assert "OddFunction" not in server.kernel.nodes
    status, info = await server.json("GET", "/object_info")
    assert status == 200 and "OddGood" in info and "OddFunction" not in info


async def test_bare_comfy_module_names(comfy_server, tmp_path: Path):
    # Packs written for ComfyUI's older layout import comfy's modules by their short names
    # (the reference puts its comfy/ folder on sys.path); they must go away with the shims.
    pack = tmp_path / "nodes_dir" / "short_names.py"
    pack.parent.mkdir()
    pack.write_text(
        "import model_management\n"
        "import comfy.model_management\n"
        "class ShortDevice:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    RETURN_TYPES = ('STRING',)\n"
        "    FUNCTION = 'run'\n"
        "    def run(self):\n"
        "        return (str(model_management.get_torch_device()),)\n"
        "SAME = model_management.InterruptProcessingException is "
        "comfy.model_management.InterruptProcessingException\n"
        "NODE_CLASS_MAPPINGS = {'ShortDevice': ShortDevice}\n"
    )
    server = await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(pack.parent)])
    assert server.kernel.plugin_records["legacy:short_names"].status != "failed"
    assert sys.modules["custom_nodes.short_names"].SAME is True
    assert "ShortDevice" in server.kernel.nodes
    await server.stop()
    assert "model_management" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("model_management")
