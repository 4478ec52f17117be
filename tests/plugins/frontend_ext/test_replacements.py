"""register_node_replacements, GET /node_replacements and their use on POST /prompt bodies."""

from __future__ import annotations

import pytest

from kernel import StartupError, hookimpl
from kernel.registry import NodeRegistry
from plugins.frontend_ext.replacements import REPLACEMENTS, NodeReplacementRegistry


class New:
    pass


class Replacer:
    @hookimpl
    def register_node_replacements(self, register, kernel):
        register(
            "OldSampler",
            "NewSampler",
            input_mapping=[
                {"new_id": "seed", "old_id": "noise_seed"},
                {"new_id": "mode", "set_value": "fast"},
            ],
            output_mapping=[{"old_idx": 1, "new_idx": 0}],
        )
        register("OldSampler", "NewSampler")  # same pair again: ignored
        register("OldSampler", "OtherSampler")
        register("Gone", "AlsoGone")


def test_hook_register_node_replacements(make_kernel):
    kernel = make_kernel(plugins=["frontend_ext", ("replacer", Replacer())])
    registry = kernel.stash[REPLACEMENTS]
    kernel.hooks.register_node_replacements(kernel, registry.register_for)
    assert [r.new_node_id for r in registry.by_old["OldSampler"]] == ["NewSampler", "OtherSampler"]
    assert registry.by_old["OldSampler"][0].plugin == "replacer"
    assert registry.as_json()["Gone"] == [{"old_node_id": "Gone", "new_node_id": "AlsoGone"}]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"old_node_id": "", "new_node_id": "B"},
        {"old_node_id": "A", "new_node_id": 3},
        {"old_node_id": "A", "new_node_id": "B", "input_mapping": [{"old_id": "x"}]},
        {"old_node_id": "A", "new_node_id": "B", "output_mapping": [{"old_idx": "0", "new_idx": 1}]},
        {"old_node_id": "A", "new_node_id": "B", "output_mapping": {"old_idx": 0}},
    ],
)
def test_invalid_registrations_are_startup_errors(kwargs):
    with pytest.raises(StartupError, match="plugin p"):
        NodeReplacementRegistry().register_for("p")(**kwargs)


async def test_node_replacements_route(comfy_server):
    server = await comfy_server(plugins=["frontend_ext", ("replacer", Replacer())])
    status, body = await server.json("GET", "/node_replacements")
    assert status == 200
    assert body["OldSampler"] == [
        {
            "old_node_id": "OldSampler",
            "new_node_id": "NewSampler",
            "input_mapping": [
                {"new_id": "seed", "old_id": "noise_seed"},
                {"new_id": "mode", "set_value": "fast"},
            ],
            "output_mapping": [{"old_idx": 1, "new_idx": 0}],
        },
        {"old_node_id": "OldSampler", "new_node_id": "OtherSampler"},
    ]
    assert await server.json("GET", "/api/node_replacements") == (200, body)


async def test_node_replacements_empty(comfy_server):
    server = await comfy_server(plugins=["frontend_ext"])
    assert await server.json("GET", "/node_replacements") == (200, {})


def _registry() -> NodeReplacementRegistry:
    registry = NodeReplacementRegistry()
    Replacer().register_node_replacements(registry.register_for("replacer"), None)
    return registry


def _nodes(*names: str) -> NodeRegistry:
    nodes = NodeRegistry()
    for name in names:
        nodes.register("test", name, New)
    return nodes


def test_apply_rewrites_unknown_nodes_and_repoints_links():
    prompt = {
        "1": {"class_type": "OldSampler", "inputs": {"noise_seed": 5, "dropped": 1}, "_meta": {"title": "S"}},
        "2": {"class_type": "Consumer", "inputs": {"a": ["1", 1], "b": ["1", 0], "c": "x"}},
        "extra": 3,
    }
    changed = _registry().apply(prompt, _nodes("NewSampler", "Consumer"))
    assert changed == ["1"]
    assert prompt["1"] == {
        "class_type": "NewSampler",
        "inputs": {"seed": 5, "mode": "fast"},
        "_meta": {"title": "S"},
    }
    assert prompt["2"]["inputs"] == {"a": ["1", 0], "b": ["1", 0], "c": "x"}
    assert prompt["extra"] == 3


def test_apply_uses_first_replacement_whose_target_exists():
    prompt = {"1": {"class_type": "OldSampler", "inputs": {"noise_seed": 1}}}
    _registry().apply(prompt, _nodes("OtherSampler"))
    assert prompt["1"] == {"class_type": "OtherSampler", "inputs": {}}


def test_apply_leaves_known_and_unreplaceable_nodes_alone():
    prompt = {
        "1": {"class_type": "OldSampler", "inputs": {"noise_seed": 1}},
        "2": {"class_type": "Gone", "inputs": {}},
        "3": {"class_type": "Mystery", "inputs": {}},
    }
    before = {k: dict(v) for k, v in prompt.items()}
    assert _registry().apply(prompt, _nodes("OldSampler")) == []
    assert prompt == before


async def test_on_prompt_applies_replacements(comfy_server):
    server = await comfy_server(plugins=["frontend_ext", ("replacer", Replacer())])
    kernel = server.kernel
    kernel.nodes.register("test", "NewSampler", New)
    body = kernel.hooks.on_prompt(kernel, {"prompt": {"1": {"class_type": "OldSampler", "inputs": {}}}})
    assert body["prompt"]["1"]["class_type"] == "NewSampler"
    assert kernel.hooks.on_prompt(kernel, {"prompt": "not a dict"}) == {"prompt": "not a dict"}
