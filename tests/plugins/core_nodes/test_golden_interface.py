"""Our /object_info entries against the reference's (tests/golden/object_info_core.json).

Saved workflows store widget values by position and the frontend builds widgets from these
entries, so every golden class we register must publish the reference's interface: names,
categories, input specs and order, outputs. Prose (tooltips, descriptions) is not compared: the
golden file leaves it out and ours is our own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel.server import start_server
from kernel.testing import ServerClient, build_kernel

from .golden import GOLDEN_DIR

GOLDEN: dict[str, Any] = json.loads((GOLDEN_DIR / "object_info_core.json").read_text())

FIELDS = (
    "display_name",
    "category",
    "output",
    "output_name",
    "output_is_list",
    "is_input_list",
    "output_node",
    "python_module",
    "input_order",
)
# Published by V3 classes always, by V1 classes only when set: compared as booleans.
FLAGS = ("deprecated", "experimental", "dev_only", "api_node")
# Prose: the golden file has none, and ours is our own.
IGNORED_OPTIONS = frozenset({"tooltip", "description"})
# Inputs whose choices are the files installed on a machine: only their kind is compared.
FILE_COMBOS = frozenset(
    {
        ("CheckpointLoaderSimple", "ckpt_name"),
        ("CheckpointLoader", "ckpt_name"),
        ("CheckpointLoader", "config_name"),
        ("unCLIPCheckpointLoader", "ckpt_name"),
        ("ImageOnlyCheckpointLoader", "ckpt_name"),
        ("LoraLoader", "lora_name"),
        ("LoraLoaderModelOnly", "lora_name"),
        ("VAELoader", "vae_name"),
        ("UNETLoader", "unet_name"),
        ("CLIPLoader", "clip_name"),
        ("DualCLIPLoader", "clip_name1"),
        ("DualCLIPLoader", "clip_name2"),
        ("TripleCLIPLoader", "clip_name1"),
        ("TripleCLIPLoader", "clip_name2"),
        ("TripleCLIPLoader", "clip_name3"),
        ("CLIPVisionLoader", "clip_name"),
        ("StyleModelLoader", "style_model_name"),
        ("GLIGENLoader", "gligen_name"),
        ("ControlNetLoader", "control_net_name"),
        ("DiffControlNetLoader", "control_net_name"),
        ("HypernetworkLoader", "hypernetwork_name"),
        ("UpscaleModelLoader", "model_name"),
        ("LoadImage", "image"),
        ("LoadImageMask", "image"),
        ("LoadImageOutput", "image"),
        ("LoadLatent", "latent"),
        ("PhotoMakerLoader", "photomaker_model_name"),
        ("LoraModelLoader", "lora"),
    }
)


def _combo(spec: list[Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """(choices, options) when ``spec`` is a combo in either of the two published forms."""
    options = dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(spec[0], list):
        return spec[0], options
    if spec[0] == "COMBO":
        return options.pop("options", []), options
    return None


def _normal(node: str, name: str, spec: Any) -> Any:
    """One input spec in a comparable form: a missing options dict equals an empty one, the
    list form of a combo equals the ``COMBO`` form, and installed files are not compared."""
    if not isinstance(spec, list):
        return spec  # hidden inputs are plain type names
    options = dict(spec[1]) if len(spec) > 1 else {}
    combo = _combo(spec)
    if combo is not None:
        choices, options = combo
        if options.get("multiselect") is False:
            del options["multiselect"]  # the newer schema spells out the default
        if (node, name) in FILE_COMBOS:
            choices = ["<files>"]
        kind: Any = ("COMBO", tuple(choices))
    else:
        kind = spec[0]
    return kind, {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}


def _inputs(node: str, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        section: {name: _normal(node, name, spec) for name, spec in entries.items()}
        for section, entries in entry["input"].items()
        if entries
    }


async def _fetch_object_info(base: Path) -> dict[str, Any]:
    server = await start_server(build_kernel(base, ["core_nodes", "models"], listen=["127.0.0.1"]), port=0)
    client = ServerClient(server, aiohttp.ClientSession())
    try:
        status, info = await client.json("GET", "/object_info")
    finally:
        await client.stop()
    assert status == 200
    return info


@pytest.fixture(scope="module")
def object_info(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real server's /object_info, fetched once: every class test reads the same answer."""
    return asyncio.run(_fetch_object_info(tmp_path_factory.mktemp("golden")))


def _core_node_names() -> set[str]:
    """The classes the core node families register, read without a server (for parametrizing)."""
    from plugins.core_nodes.nodes import FAMILIES

    return {name for family in FAMILIES for name in family.NODES}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_interface_is_the_reference(name: str, object_info: dict[str, Any]) -> None:
    assert name in object_info, f"{name} (group {GOLDEN[name]['group']}) is not published: saved workflows using it do not load"
    ours, golden = object_info[name], GOLDEN[name]
    assert _inputs(name, ours) == _inputs(name, golden)
    for field in FIELDS:
        assert ours[field] == golden[field], field
    # The frontend hides deprecated nodes from its search and badges experimental ones.
    for flag in FLAGS:
        assert bool(ours.get(flag)) == bool(golden.get(flag)), flag


def test_every_golden_class_is_a_core_node(object_info: dict[str, Any]) -> None:
    """All 315 reference classes (groups A and B) come from the core families, not from a pack."""
    missing = sorted(set(GOLDEN) - _core_node_names())
    assert not missing, missing
    assert set(GOLDEN) <= set(object_info)
