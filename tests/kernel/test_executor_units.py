"""Unit tests of the executor's pure parts: signatures, cache policies, list mapping, order."""

from __future__ import annotations

import asyncio

import pytest

from kernel.executor.cache import (
    CacheEntry,
    LRUOutputCache,
    NullOutputCache,
    ObjectCache,
    OutputCache,
    SignatureKeys,
    make_output_cache,
)
from kernel.executor.calls import call_plan, merge_outputs, merge_ui
from kernel.executor.graph import DependencyCycleError, DynamicPrompt, ExecutionList, NodeInputError
from kernel.nodes import ExecutionBlocker


def keys_for(prompt: dict, bound: frozenset[str] = frozenset()) -> SignatureKeys:
    return SignatureKeys(DynamicPrompt(prompt), lambda ct: ct in bound)


def test_signature_ignores_ids_but_not_values():
    a = keys_for(
        {"1": {"class_type": "C", "inputs": {"v": 1}}, "2": {"class_type": "D", "inputs": {"x": ["1", 0]}}}
    )
    b = keys_for(
        {"x": {"class_type": "C", "inputs": {"v": 1}}, "y": {"class_type": "D", "inputs": {"x": ["x", 0]}}}
    )
    c = keys_for(
        {"x": {"class_type": "C", "inputs": {"v": 2}}, "y": {"class_type": "D", "inputs": {"x": ["x", 0]}}}
    )
    assert a.key("2") == b.key("y")
    assert a.key("1") == b.key("x")
    assert c.key("y") != b.key("y")  # a changed ancestor changes the descendant


def test_signature_binds_ids_for_not_idempotent_nodes():
    prompt = {"1": {"class_type": "N", "inputs": {}}, "2": {"class_type": "N", "inputs": {}}}
    assert keys_for(prompt).key("1") == keys_for(prompt).key("2")
    bound = keys_for(prompt, frozenset({"N"}))
    assert bound.key("1") != bound.key("2")


def test_signature_never_matches_nan_or_objects():
    prompt = {"1": {"class_type": "C", "inputs": {"v": 1}}}
    first, second = keys_for(prompt), keys_for(prompt)
    first.is_changed["1"] = second.is_changed["1"] = float("nan")
    assert first.key("1") != second.key("1")
    third, fourth = keys_for({"1": {"class_type": "C", "inputs": {"v": object()}}}), keys_for(prompt)
    assert third.key("1") != fourth.key("1")


def test_signature_survives_cycles_and_dangling_links():
    prompt = {
        "1": {"class_type": "C", "inputs": {"x": ["2", 0]}},
        "2": {"class_type": "C", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "C", "inputs": {"x": ["missing", 0]}},
    }
    keys = keys_for(prompt)
    assert len({keys.key("1"), keys.key("2"), keys.key("3")}) == 3


def test_classic_cache_keeps_only_what_the_prompt_uses():
    cache = OutputCache()
    entry = CacheEntry(None, [[1]])
    cache.set(b"a", entry, b"a")
    cache.set(b"b", entry, b"b")
    cache.set(b"child", entry, ("expansion", "5", "Loop"))
    cache.begin_prompt({b"a", ("expansion", "5", "Loop")})
    assert cache.get(b"a") is entry and cache.get(b"b") is None and cache.get(b"child") is entry


def test_lru_cache_evicts_old_generations_only():
    cache = LRUOutputCache(2)
    entry = CacheEntry(None, [[1]])
    cache.begin_prompt(set())
    for key in (b"1", b"2", b"3"):
        cache.set(key, entry, key)
    assert len(cache) == 3  # all in use by the running prompt
    cache.begin_prompt(set())
    cache.get(b"3")
    cache.set(b"4", entry, b"4")
    assert cache.get(b"3") is entry and cache.get(b"4") is entry
    assert cache.get(b"1") is None and cache.get(b"2") is None


def test_cache_modes_and_objects():
    assert isinstance(make_output_cache("none", 0, None), NullOutputCache)
    assert type(make_output_cache("classic", 0, None)) is OutputCache
    objects = ObjectCache(enabled=True)
    first = objects.get_or_create("5", "C", object)
    assert objects.get_or_create("5", "C", object) is first
    objects.keep_only({"6"})
    assert objects.get_or_create("5", "C", object) is not first
    off = ObjectCache(enabled=False)
    assert off.get_or_create("5", "C", object) is not off.get_or_create("5", "C", object)


def test_call_plan_pads_with_last_item():
    plan = call_plan({"a": [1, 2, 3], "b": [10]}, input_is_list=False)
    assert plan == [(0, {"a": 1, "b": 10}), (1, {"a": 2, "b": 10}), (2, {"a": 3, "b": 10})]
    assert call_plan({}, input_is_list=False) == [(0, {})]
    assert call_plan({"a": [1, 2]}, input_is_list=True) == [(0, {"a": [1, 2]})]


def test_merge_outputs_and_ui():
    blocker = ExecutionBlocker(None)
    assert merge_outputs([(1, [1, 2]), (2, blocker)], (False, True)) == [[1, 2], [1, 2, blocker]]
    assert merge_ui([{"a": [1], "b": [2]}, {"a": [3]}]) == {"a": [1, 3], "b": [2]}


def order(prompt: dict, outputs: list[str], traits: dict[str, tuple] | None = None) -> list[str]:
    traits = traits or {}
    dp = DynamicPrompt(prompt)
    done: set[str] = set()
    execution_list = ExecutionList(
        dp, lambda n: n in done, lambda ct: traits.get(ct, (frozenset(), ct == "Out", False))
    )
    for output in outputs:
        execution_list.add_node(output)
    ran: list[str] = []

    async def loop() -> None:
        while not execution_list.is_empty():
            node = await execution_list.stage_node_execution(lambda: None)
            ran.append(node)
            done.add(node)
            execution_list.complete_node_execution()

    asyncio.run(loop())
    return ran


def test_order_prefers_nodes_that_feed_outputs():
    prompt = {
        "load": {"class_type": "C", "inputs": {}},
        "other": {"class_type": "C", "inputs": {}},
        "decode": {"class_type": "C", "inputs": {"a": ["load", 0], "b": ["other", 0]}},
        "out": {"class_type": "Out", "inputs": {"x": ["decode", 0]}},
        "side": {"class_type": "C", "inputs": {}},
        "out2": {"class_type": "Out", "inputs": {"x": ["side", 0]}},
    }
    ran = order(prompt, ["out", "out2"])
    assert ran.index("side") < ran.index("out2") and ran.index("decode") < ran.index("out")
    assert sorted(ran) == sorted(prompt)
    # "side" feeds an output directly, so it is picked before the two-steps-away loaders.
    assert ran[0] == "side" and ran[1] == "out2"


def test_lazy_inputs_are_not_followed_until_asked():
    prompt = {
        "a": {"class_type": "C", "inputs": {}},
        "s": {"class_type": "Lazy", "inputs": {"x": ["a", 0], "k": 1}},
    }
    traits = {"Lazy": (frozenset({"x"}), True, False)}
    assert order(prompt, ["s"], traits) == ["s"]
    dp = DynamicPrompt(prompt)
    execution_list = ExecutionList(
        dp, lambda n: False, lambda ct: traits.get(ct, (frozenset(), False, False))
    )
    execution_list.add_node("s")
    execution_list.make_input_strong_link("s", "x")
    assert "a" in execution_list.pending
    with pytest.raises(NodeInputError):
        execution_list.make_input_strong_link("s", "k")
    with pytest.raises(NodeInputError):
        execution_list.make_input_strong_link("s", "nope")


def test_cycle_blames_the_first_ephemeral_node_by_display_id():
    dp = DynamicPrompt({"5": {"class_type": "Out", "inputs": {"x": ["5.0.0.1", 0]}}})
    dp.add_ephemeral_node("5.0.0.1", {"class_type": "C", "inputs": {"x": ["5.0.0.2", 0]}}, "5", "5")
    dp.add_ephemeral_node("5.0.0.2", {"class_type": "C", "inputs": {"x": ["5.0.0.1", 0]}}, "5", "5")
    execution_list = ExecutionList(dp, lambda n: False, lambda ct: (frozenset(), ct == "Out", False))
    execution_list.add_node("5")
    with pytest.raises(DependencyCycleError) as info:
        asyncio.run(execution_list.stage_node_execution(lambda: None))
    assert str(info.value) == "5"
