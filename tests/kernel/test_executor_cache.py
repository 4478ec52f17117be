"""Caching per mode: identical resubmits, one changed widget, IS_CHANGED NaN, instance reuse, /free."""

from __future__ import annotations

import pytest

from tests.kernel.exec_helpers import cached_nodes, connect, executed_ui, executing_nodes, run, start

MODES = {
    "classic": {},
    "lru": {"cache_lru": 50},
    "ram": {"cache_ram": 0.0001},
    "none": {"cache_none": True},
}


def graph(b: int = 3) -> dict:
    return {
        "1": {"class_type": "ExecConst", "inputs": {"value": 2}},
        "2": {"class_type": "ExecConst", "inputs": {"value": b}},
        "3": {"class_type": "ExecAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "4": {"class_type": "ExecAdd", "inputs": {"a": ["3", 0], "b": ["2", 0]}},
        "5": {"class_type": "ExecShow", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "ExecShow", "inputs": {"value": ["3", 0]}},
    }


def other_graph() -> dict:
    """A prompt sharing no node with ``graph()``."""
    return {
        "x": {"class_type": "ExecConst", "inputs": {"value": 99}},
        "y": {"class_type": "ExecShow", "inputs": {"value": ["x", 0]}},
    }


async def cached_after_another_prompt(server) -> list[str]:
    """Run ``graph()``, then ``other_graph()``, then ``graph()`` again: the ids served from cache."""
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    await run(server, ws, client_id, other_graph())
    return cached_nodes(await run(server, ws, client_id, graph()))


@pytest.mark.parametrize("mode", ["classic", "lru", "ram"])
async def test_identical_resubmit_is_fully_cached(comfy_server, mode):
    server = await start(comfy_server, **MODES[mode])
    client_id, ws = await connect(server)
    first = await run(server, ws, client_id, graph())
    assert cached_nodes(first) == []
    assert executing_nodes(first) and set(executing_nodes(first)) == {"1", "2", "3", "4", "5", "6"}
    second = await run(server, ws, client_id, graph())
    assert sorted(cached_nodes(second)) == ["1", "2", "3", "4", "5", "6"]
    assert executing_nodes(second) == []
    # Cached output nodes replay their UI.
    assert executed_ui(second) == {"5": {"values": [15]}, "6": {"values": [12]}}


async def test_none_mode_reruns_everything(comfy_server):
    server = await start(comfy_server, **MODES["none"])
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    second = await run(server, ws, client_id, graph())
    assert cached_nodes(second) == []
    assert set(executing_nodes(second)) == {"1", "2", "3", "4", "5", "6"}


@pytest.mark.parametrize("mode", ["classic", "lru", "ram"])
async def test_changed_widget_reruns_only_it_and_dependents(comfy_server, mode):
    server = await start(comfy_server, **MODES[mode])
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph(b=3))
    second = await run(server, ws, client_id, graph(b=4))
    assert sorted(executing_nodes(second)) == ["2", "4", "5"]
    assert sorted(cached_nodes(second)) == ["1", "3", "6"]
    assert executed_ui(second)["5"] == {"values": [16]}


async def test_node_ids_do_not_matter(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    renumbered = {
        "a": {"class_type": "ExecConst", "inputs": {"value": 2}},
        "b": {"class_type": "ExecAdd", "inputs": {"a": ["a", 0], "b": 10}},
        "c": {"class_type": "ExecShow", "inputs": {"value": ["b", 0]}},
    }
    messages = await run(server, ws, client_id, renumbered)
    assert sorted(cached_nodes(messages)) == ["a", "b", "c"]


async def test_classic_keeps_only_the_previous_prompt(comfy_server):
    server = await start(comfy_server, cache_classic=True)
    again = await cached_after_another_prompt(server)
    assert again == []


async def test_lru_keeps_entries_across_prompts(comfy_server):
    server = await start(comfy_server, cache_lru=100)
    again = await cached_after_another_prompt(server)
    assert sorted(again) == ["1", "2", "3", "4", "5", "6"]


async def test_lru_evicts_beyond_its_size(comfy_server):
    server = await start(comfy_server, cache_lru=2)
    again = await cached_after_another_prompt(server)
    assert again == []


async def test_is_changed_nan_always_reruns(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecAlwaysChanged", "inputs": {"value": 1}},
        "2": {"class_type": "ExecAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "ExecShow", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "ExecConst", "inputs": {"value": 5}},
        "5": {"class_type": "ExecShow", "inputs": {"value": ["4", 0]}},
    }
    await run(server, ws, client_id, prompt)
    second = await run(server, ws, client_id, prompt)
    assert sorted(executing_nodes(second)) == ["1", "2", "3"]
    assert sorted(cached_nodes(second)) == ["4", "5"]


async def test_instances_persist_between_prompts(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 1}},
        "c": {"class_type": "ExecCounter", "inputs": {"value": ["1", 0]}},
    }
    first = await run(server, ws, client_id, prompt)
    prompt["1"]["inputs"]["value"] = 2
    second = await run(server, ws, client_id, prompt)
    assert executed_ui(first)["c"] == {"calls": [1]}
    assert executed_ui(second)["c"] == {"calls": [2]}


async def test_free_memory_resets_caches(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    async with server.post("/free", json={"free_memory": True}) as resp:
        assert resp.status == 200
    again = await run(server, ws, client_id, graph())
    assert cached_nodes(again) == []


async def test_expanded_nodes_hit_the_cache_when_the_parent_reruns(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 5}},
        "5": {"class_type": "ExecForLoop", "inputs": {"value": ["1", 0], "count": 2}},
        "9": {"class_type": "ExecShow", "inputs": {"value": ["5", 0]}},
        "10": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    await run(server, ws, client_id, prompt)
    prompt["5"]["inputs"]["count"] = 3
    second = await run(server, ws, client_id, prompt)
    # The first two loop bodies have the same deterministic ids and inputs: cached.
    assert executing_nodes(second) == ["5", "5.0.0.3", "9"]
    assert executed_ui(second)["9"] == {"values": [8]}


async def test_is_changed_that_raises_counts_as_changed(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecBrokenIsChanged", "inputs": {"value": 1}},
        "2": {"class_type": "ExecShow", "inputs": {"value": ["1", 0]}},
    }
    await run(server, ws, client_id, prompt)
    second = await run(server, ws, client_id, prompt)
    assert sorted(executing_nodes(second)) == ["1", "2"]


async def test_ram_pressure_evicts_older_prompts(comfy_server):
    # A headroom larger than any machine's RAM: always "under pressure".
    server = await start(comfy_server, cache_ram=10.0**9)
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    # An identical resubmit still hits: entries the running prompt uses are never evicted.
    again = await run(server, ws, client_id, graph())
    assert sorted(cached_nodes(again)) == ["1", "2", "3", "4", "5", "6"]
    await run(server, ws, client_id, other_graph())
    third = await run(server, ws, client_id, graph())
    assert cached_nodes(third) == []


async def test_execution_cached_lists_hits_not_needed_by_the_selected_outputs(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    await run(server, ws, client_id, graph())
    # Only output 6 is selected now, yet the hits for 2, 4 and 5 are still listed.
    second = await run(server, ws, client_id, graph(), partial_execution_targets=["6"])
    assert sorted(cached_nodes(second)) == ["1", "2", "3", "4", "5", "6"]
    assert executed_ui(second) == {"6": {"values": [12]}}
