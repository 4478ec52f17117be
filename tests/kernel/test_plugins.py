"""Plugin discovery, selection, disabling, failures and provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kernel import StartupError, UsageError, hookimpl
from kernel.builtin import ESSENTIAL_PLUGINS
from kernel.plugins import ENTRY_POINT_GROUP
from tests.fakedist import make_distribution

THIRD_PARTY = """
from kernel import hookimpl

class Shout:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "text"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    def run(self, text):
        return (text.upper(),)

@hookimpl
def register_nodes(register):
    register("Shout", Shout)

@hookimpl
def register_feature_flags():
    return {"fakepack": True}
"""

BROKEN = "raise RuntimeError('this plugin cannot import')\n"


@pytest.fixture
def fakepack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_distribution(
        tmp_path / "site",
        "fakepack",
        {"fakepack": "fakepack_plugin", "brokenpack": "brokenpack_plugin"},
        {"fakepack_plugin": THIRD_PARTY, "brokenpack_plugin": BROKEN},
    )
    monkeypatch.syspath_prepend(str(root))
    for mod in ("fakepack_plugin", "brokenpack_plugin"):
        sys.modules.pop(mod, None)
    return root


def our_plugins() -> list[str]:
    return sorted(
        ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("plugins.")
    )


def test_unknown_plugin_name_lists_available(make_kernel):
    with pytest.raises(UsageError) as info:
        make_kernel(plugins=["no_such_plugin"])
    message = str(info.value)
    assert "no_such_plugin" in message
    assert "available plugins:" in message
    for name in our_plugins():
        assert name in message


def test_disabling_an_essential_plugin_is_an_error(make_kernel):
    for name in ESSENTIAL_PLUGINS:
        with pytest.raises(UsageError, match=f"plugin {name} is essential"):
            make_kernel(plugins=[], disabled=[name])


def test_third_party_entry_point_discovered_listed_and_disableable(fakepack, make_kernel):
    kernel = make_kernel(plugins=None, disabled=["brokenpack"])
    record = kernel.plugin_records["fakepack"]
    assert record.status == "enabled"
    assert record.source == "entrypoint"
    assert record.distribution == "fakepack" and record.version == "1.0"
    assert "register_nodes" in record.hooks
    assert kernel.nodes.get("Shout").plugin == "fakepack"
    assert kernel.feature_flags["fakepack"] is True

    off = make_kernel(plugins=None, disabled=["fakepack", "brokenpack"])
    assert off.plugin_records["fakepack"].status == "blocked"
    assert not off.has_plugin("fakepack")
    assert "Shout" not in off.nodes
    assert "fakepack" not in off.feature_flags


def test_failed_import_is_recorded_not_fatal_unless_named(fakepack, make_kernel):
    kernel = make_kernel(plugins=None)
    record = kernel.plugin_records["brokenpack"]
    assert record.status == "failed"
    assert "this plugin cannot import" in (record.error or "")
    assert kernel.has_plugin("fakepack")
    with pytest.raises(StartupError, match="brokenpack failed to load"):
        make_kernel(plugins=["brokenpack"])


def test_plugins_list_cli_shows_failed_and_blocked(fakepack):
    env = {"PYTHONPATH": str(fakepack), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "plugins", "--disable", "fakepack", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    listed = {r["name"]: r for r in json.loads(out.stdout)}
    assert listed["brokenpack"]["status"] == "failed"
    assert listed["fakepack"]["status"] == "blocked"
    for name in ESSENTIAL_PLUGINS:
        assert listed[name]["status"] == "enabled" and listed[name]["source"] == "essential"
    hooks = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "plugins", "hooks"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "register_nodes" in hooks.stdout and "fakepack" in hooks.stdout


def test_env_selects_exact_plugin_set(fakepack, make_kernel, monkeypatch):
    from kernel.settings import plugin_selection

    monkeypatch.setenv("COMFYKERNEL_PLUGINS", "fakepack")
    monkeypatch.setenv("COMFYKERNEL_DISABLED_PLUGINS", "x,y")
    selected, disabled = plugin_selection(None, None)
    assert selected == ["fakepack"] and disabled == ["x", "y"]
    monkeypatch.setenv("COMFYKERNEL_PLUGINS", "")
    assert plugin_selection(None, None)[0] == []
    assert plugin_selection("all", None)[0] is None


class NodeA:
    RETURN_TYPES = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


class FirstPack:
    @hookimpl
    def register_nodes(self, register):
        register("SameName", NodeA)


class SecondPack:
    @hookimpl
    def register_nodes(self, register):
        register("SameName", NodeA)


def test_duplicate_node_name_names_both_plugins(make_kernel):
    with pytest.raises(StartupError) as info:
        make_kernel(plugins=[("first_pack", FirstPack()), ("second_pack", SecondPack())])
    assert "SameName" in str(info.value)
    assert "first_pack" in str(info.value) and "second_pack" in str(info.value)


def test_typo_in_hook_name_is_caught(make_kernel):
    class Typo:
        @hookimpl
        def register_node(self, register):  # missing "s"
            pass

    with pytest.raises(Exception, match="register_node"):
        make_kernel(plugins=[("typo", Typo())])


@pytest.mark.parametrize("name", our_plugins())
async def test_each_plugin_boots_alone(name, comfy_server):
    server = await comfy_server(plugins=[name])
    assert server.kernel.has_plugin(name)
    async with server.get("/system_stats") as resp:
        assert resp.status == 200


async def test_all_plugins_boot_together(comfy_server):
    server = await comfy_server(plugins=None)
    for name in our_plugins():
        assert server.kernel.has_plugin(name), name
    async with server.get("/features") as resp:
        assert resp.status == 200


def test_every_plugin_folder_has_an_entry_point():
    folders = sorted(p.parent.name for p in (Path(__file__).parents[2] / "plugins").glob("*/plugin.py"))
    assert set(folders) <= set(our_plugins())
