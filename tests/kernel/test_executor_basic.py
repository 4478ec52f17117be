"""The WebSocket message order and the basic node contract over real HTTP + WS."""

from __future__ import annotations

from tests.kernel.exec_helpers import EXEC_PACK, connect, executed_ui, executing_nodes, of_type, run, start


def chain() -> dict:
    return {
        "1": {"class_type": "ExecConst", "inputs": {"value": 2}},
        "2": {"class_type": "ExecAdd", "inputs": {"a": ["1", 0], "b": 3}},
        "3": {"class_type": "ExecShow", "inputs": {"value": ["2", 0]}},
    }


async def test_message_order_for_a_prompt(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    messages = await run(server, ws, client_id, chain())
    types = [m["type"] for m in messages]
    # status frames come from the queue; drop them to check the per-prompt sequence.
    seq = [t for t in types if t != "status"]
    assert seq[:2] == ["execution_start", "execution_cached"]
    assert seq[-2:] == ["execution_success", "executing"]
    # progress_state is coalesced (latest state wins), but the first change goes out at once and
    # whatever waits is flushed before `executed` and before the prompt's final message, so the
    # latest state a client holds at those points is current.
    assert seq[2] == "progress_state"
    assert seq[-3] == "progress_state"

    def states_before(type_: str) -> dict[str, str]:
        last = None
        for m in messages:
            if m["type"] == type_:
                return {k: v["state"] for k, v in last["nodes"].items()}
            if m["type"] == "progress_state":
                last = m["data"]
        raise AssertionError(type_)

    assert states_before("executed") == {"1": "finished", "2": "finished", "3": "running"}
    assert states_before("execution_success") == {"1": "finished", "2": "finished", "3": "finished"}
    assert executing_nodes(messages) == ["1", "2", "3"]
    assert executed_ui(messages) == {"3": {"values": [5]}}
    executed = of_type(messages, "executed")[0]
    assert executed["display_node"] == "3"
    last_state = of_type(messages, "progress_state")[-1]
    assert last_state["nodes"]["3"]["state"] == "finished"
    assert set(last_state["nodes"]["3"]) == {
        "value",
        "max",
        "state",
        "node_id",
        "prompt_id",
        "display_node_id",
        "parent_node_id",
        "real_node_id",
    }
    # The final executing null comes after the queue status update.
    assert types.index("execution_success") < len(types) - 1
    await ws.close()


async def test_execution_error_fields(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 7}},
        "2": {"class_type": "ExecFail", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "ExecShow", "inputs": {"value": ["2", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    errors = of_type(messages, "execution_error")
    assert len(errors) == 1 and not of_type(messages, "execution_success")
    err = errors[0]
    assert err["node_id"] == "2" and err["node_type"] == "ExecFail"
    assert err["executed"] == ["1"]
    assert err["exception_message"] == "boom 7\n"
    assert err["exception_type"] == "RuntimeError"
    assert isinstance(err["traceback"], list) and err["traceback"]
    assert err["current_inputs"] == {"value": [7]}
    assert err["current_outputs"] == ["1"]
    assert isinstance(err["timestamp"], int)
    assert "3" not in executing_nodes(messages)


async def test_hidden_inputs_and_raw_link(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 1}},
        "h": {"class_type": "ExecHidden", "inputs": {"value": ["1", 0]}},
        "r": {"class_type": "ExecRawLink", "inputs": {"value": ["1", 0]}},
    }
    messages = await run(server, ws, client_id, prompt, extra_data={"extra_pnginfo": {"workflow": {"x": 1}}})
    ui = executed_ui(messages)
    assert ui["h"] == {
        "uid": ["h"],
        "prompt_nodes": ["1", "h", "r"],
        "pnginfo": [{"workflow": {"x": 1}}],
        "dyn_has_self": [True],
    }
    assert ui["r"] == {"link": [["1", 0]]}
    # rawLink still orders the source first.
    assert executing_nodes(messages).index("1") < executing_nodes(messages).index("r")


async def test_v3_node_end_to_end(comfy_server):
    server = await start(comfy_server)
    client_id, ws = await connect(server)
    prompt = {
        "1": {"class_type": "ExecConst", "inputs": {"value": 4}},
        "2": {"class_type": "ExecV3Scale", "inputs": {"value": ["1", 0], "factor": 3}},
        "3": {"class_type": "ExecV3AsyncShow", "inputs": {"value": ["2", 0]}},
    }
    messages = await run(server, ws, client_id, prompt)
    ui = executed_ui(messages)
    assert ui["2"] == {"scaled": [12], "uid": ["2"]}
    assert ui["3"] == {"values": [12]}
    assert of_type(messages, "execution_success")


async def test_no_client_id_sends_nothing_per_prompt_but_broadcasts_progress(comfy_server):
    server = await start(comfy_server)
    _, observer = await connect(server)
    _, owner_ws = await connect(server)
    status, answer = await server.json("POST", "/prompt", json={"prompt": chain()})
    assert status == 200
    prompt_id = answer["prompt_id"]
    seen: list[str] = []
    # Wait for the history-free end signal: the last progress_state marks node 3 finished.
    while True:
        msg = await observer.receive_json(timeout=10)
        seen.append(msg["type"])
        if msg["type"] == "progress_state" and msg["data"]["nodes"].get("3", {}).get("state") == "finished":
            break
    assert set(seen) <= {"status", "progress_state"}
    assert msg["data"]["prompt_id"] == prompt_id


async def test_every_executed_node_goes_through_wrap_node_execution(comfy_server):
    from kernel import hookimpl

    calls: list[tuple[str, str]] = []

    class Timing:
        @hookimpl(wrapper=True)
        def wrap_node_execution(self, node_id, class_type):
            calls.append((node_id, class_type))
            return (yield)

    server = await comfy_server(plugins=[EXEC_PACK, ("timing", Timing())])
    client_id, ws = await connect(server)
    await run(server, ws, client_id, chain())
    assert calls == [("1", "ExecConst"), ("2", "ExecAdd"), ("3", "ExecShow")]
    calls.clear()
    await run(server, ws, client_id, chain())
    assert calls == []  # cached nodes are not called
