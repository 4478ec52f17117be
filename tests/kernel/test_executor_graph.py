"""Execution order features: lazy inputs, expansion, list mapping, blockers, async overlap."""

from __future__ import annotations

import asyncio
import time

from tests.kernel.exec_helpers import connect, executed_ui, executing_nodes, of_type, run, start, submit


async def test_lazy_unneeded_branch_never_runs(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "a": {"class_type": "ExecConst", "inputs": {"value": 10}},
        "b": {"class_type": "ExecFail", "inputs": {"value": 1}},  # would fail if it ran
        "s": {"class_type": "ExecLazySwitch", "inputs": {"choose_a": True, "a": ["a", 0], "b": ["b", 0]}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["s", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    assert of_type(messages, "execution_success")
    ran = executing_nodes(messages)
    assert "b" not in ran
    # The switch is staged, asks for "a", and is staged again: two executing messages.
    assert ran.count("s") == 2
    assert ran.index("a") < len(ran) - 1 - ran[::-1].index("s")
    assert executed_ui(messages)["out"] == {"values": [10]}


async def test_lazy_other_branch(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "a": {"class_type": "ExecFail", "inputs": {"value": 1}},
        "b": {"class_type": "ExecConst", "inputs": {"value": 20}},
        "s": {"class_type": "ExecLazySwitch", "inputs": {"choose_a": False, "a": ["a", 0], "b": ["b", 0]}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["s", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    assert executed_ui(messages)["out"] == {"values": [20]}
    assert "a" not in executing_nodes(messages)


async def test_expansion_ids_and_result(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 5}},
        "5": {"class_type": "ExecForLoop", "inputs": {"value": ["1", 0], "count": 3}},
        "9": {"class_type": "ExecShow", "inputs": {"value": ["5", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    assert of_type(messages, "execution_success")
    ran = executing_nodes(messages)
    assert ran == ["1", "5", "5.0.0.1", "5.0.0.2", "5.0.0.3", "9"]
    assert executed_ui(messages)["9"] == {"values": [8]}
    # Expanded nodes are attributed to the expanding node in progress_state.
    nodes = of_type(messages, "progress_state")[-1]["nodes"]
    assert nodes["5.0.0.2"]["display_node_id"] == "5"
    assert nodes["5.0.0.2"]["parent_node_id"] == "5"
    assert nodes["5.0.0.2"]["real_node_id"] == "5"
    executing = [d for d in of_type(messages, "executing") if d["node"] == "5.0.0.1"][0]
    assert executing["display_node"] == "5"


async def test_expansion_over_a_list_uses_call_index(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "L": {"class_type": "ExecMakeList", "inputs": {"start": 0, "count": 2}},
        "5": {"class_type": "ExecForLoop", "inputs": {"value": ["L", 0], "count": 1}},
        "9": {"class_type": "ExecShowList", "inputs": {"value": ["5", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    ran = executing_nodes(messages)
    assert {"5.0.0.1", "5.1.0.1"} <= set(ran)
    assert executed_ui(messages)["9"] == {"lists": [[1, 2]]}


async def test_list_padding_repeats_last_item(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "A": {"class_type": "ExecMakeList", "inputs": {"start": 0, "count": 4}},
        "B": {"class_type": "ExecMakeList", "inputs": {"start": 100, "count": 2}},
        "sum": {"class_type": "ExecAdd", "inputs": {"a": ["A", 0], "b": ["B", 0]}},
        "out": {"class_type": "ExecShowList", "inputs": {"value": ["sum", 0]}},
        "each": {"class_type": "ExecShow", "inputs": {"value": ["sum", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    ui = executed_ui(messages)
    # B = [100, 101] is padded with 101: 0+100, 1+101, 2+101, 3+101.
    assert ui["out"] == {"lists": [[100, 102, 103, 104]]}
    # A normal output node is called once per item; its UI lists are concatenated.
    assert ui["each"] == {"values": [100, 102, 103, 104]}


async def test_output_is_list_concatenates(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "starts": {"class_type": "ExecMakeList", "inputs": {"start": 10, "count": 2}},
        "lists": {"class_type": "ExecMakeList", "inputs": {"start": ["starts", 0], "count": 2}},
        "out": {"class_type": "ExecShowList", "inputs": {"value": ["lists", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    # Called for start=10 and start=11, each giving a 2-item list: concatenated, not nested.
    assert executed_ui(messages)["out"] == {"lists": [[10, 11, 11, 12]]}


async def test_blockers_apply_per_list_index(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "L": {"class_type": "ExecMakeList", "inputs": {"start": 0, "count": 3}},
        "blk": {"class_type": "ExecBlockIf", "inputs": {"value": ["L", 0], "blocked": 1}},
        "add": {"class_type": "ExecAdd", "inputs": {"a": ["blk", 0], "b": 10}},
        "each": {"class_type": "ExecShow", "inputs": {"value": ["add", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    assert of_type(messages, "execution_success")
    assert not of_type(messages, "execution_error")
    # Index 1 was blocked all the way down; indexes 0 and 2 went through.
    assert executed_ui(messages)["each"] == {"values": [10, 12]}


async def test_blocker_with_message_reports_but_does_not_fail(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "c": {"class_type": "ExecConst", "inputs": {"value": 3}},
        "blk": {
            "class_type": "ExecBlockIf",
            "inputs": {"value": ["c", 0], "blocked": 3, "message": "stop here"},
        },
        "out": {"class_type": "ExecShow", "inputs": {"value": ["blk", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    errors = of_type(messages, "execution_error")
    assert len(errors) == 1
    assert errors[0]["exception_type"] == "ExecutionBlocked"
    assert errors[0]["exception_message"] == "Execution Blocked: stop here"
    assert errors[0]["node_id"] == "out"
    assert of_type(messages, "execution_success")
    assert "out" not in executed_ui(messages)


async def test_async_nodes_overlap(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        f"s{i}": {"class_type": "ExecAsyncSleep", "inputs": {"seconds": 1.0, "value": i}} for i in range(3)
    }
    prompt["sum1"] = {"class_type": "ExecAdd", "inputs": {"a": ["s0", 0], "b": ["s1", 0]}}
    prompt["sum2"] = {"class_type": "ExecAdd", "inputs": {"a": ["sum1", 0], "b": ["s2", 0]}}
    prompt["out"] = {"class_type": "ExecShow", "inputs": {"value": ["sum2", 0]}}
    started = time.monotonic()
    messages = await run(server, ws, client_id, prompt)
    elapsed = time.monotonic() - started
    assert executed_ui(messages)["out"] == {"values": [3]}
    assert elapsed < 2.5, elapsed


async def test_async_node_failure_is_an_execution_error(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "slow": {"class_type": "ExecAsyncSleep", "inputs": {"seconds": 0.3, "value": 1}},
        "f": {"class_type": "ExecAsyncFail", "inputs": {"value": 4}},
        "sum": {"class_type": "ExecAdd", "inputs": {"a": ["slow", 0], "b": ["f", 0]}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["sum", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    err = of_type(messages, "execution_error")[0]
    assert err["node_id"] == "f" and err["node_type"] == "ExecAsyncFail"
    assert err["exception_type"] == "ValueError"
    assert err["exception_message"] == "async boom 4\n"
    assert not of_type(messages, "execution_success")


async def test_runtime_cycle_from_expansion(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "x": {"class_type": "ExecBadExpand", "inputs": {"mode": "cycle", "value": 1}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["x", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    err = of_type(messages, "execution_error")[0]
    assert err["exception_type"] == "graph.DependencyCycleError"
    assert err["exception_message"] == "Dependency cycle detected"
    assert err["node_id"] == "x" and err["node_type"] == "ExecBadExpand"


async def test_unknown_class_in_expansion_fails_at_run_time(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "x": {"class_type": "ExecBadExpand", "inputs": {"mode": "unknown", "value": 1}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["x", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    err = of_type(messages, "execution_error")[0]
    assert err["node_id"] == "x"
    assert "NoSuchNode" in err["exception_message"]


async def test_expansion_reusing_an_id_fails(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "dup": {"class_type": "ExecConst", "inputs": {"value": 1}},
        "x": {"class_type": "ExecBadExpand", "inputs": {"mode": "duplicate", "value": 1}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["x", 0]}},
        "out2": {"class_type": "ExecShow", "inputs": {"value": ["dup", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    err = of_type(messages, "execution_error")[0]
    assert err["node_id"] == "x" and "dup" in err["exception_message"]


async def test_intermediate_output_replayed_when_cached(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "i": {"class_type": "ExecIntermediate", "inputs": {"value": 4}},
        "out": {"class_type": "ExecShow", "inputs": {"value": ["i", 0]}},
    }
    first = await run(server, ws, client_id, prompt)
    assert executed_ui(first)["i"] == {"seen": [4]}
    second = await run(server, ws, client_id, prompt)
    assert executing_nodes(second) == []
    assert executed_ui(second) == {"out": {"values": [4]}, "i": {"seen": [4]}}


async def test_deep_chain_runs_without_recursion_limits(comfy_server):
    from kernel.events import PromptFinished

    server = await start(comfy_server)
    finished: list[PromptFinished] = []
    server.kernel.bus.subscribe(lambda e: finished.append(e) if isinstance(e, PromptFinished) else None)
    depth = 2000
    prompt = {"0": {"class_type": "ExecConst", "inputs": {"value": 0}}}
    for i in range(1, depth):
        prompt[str(i)] = {"class_type": "ExecAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "ExecShow", "inputs": {"value": [str(depth - 1), 0]}}
    # No client_id: per-prompt messages go nowhere, so this measures the engine, not the socket.
    for _ in range(2):
        await submit(server, prompt)
    for _ in range(600):
        if len(finished) == 2:
            break
        await asyncio.sleep(0.05)
    first, second = finished
    assert first.status["status_str"] == "success"
    assert first.outputs == {"out": {"values": [depth - 1]}}
    cached = second.status["messages"][1]
    assert cached[0] == "execution_cached" and len(cached[1]["nodes"]) == depth + 1
