"""Node semantics real packs rely on, through the real server: hidden literal inputs (self-cloning
loops), ``str``-subclass types ("any type") in validation, errors and ``/object_info``, and the
job detail route's answer for unknown ids.

The packs ``loop_pack`` and ``anytype_pack`` are loaded from a custom-nodes folder of their own,
so the server starts without the other test packs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.compat.helpers import PACKS

PLUGINS = ["comfy_compat", "history"]
# A regression (a loop that never ends) must fail the test, not hang it.
RUN_TIMEOUT = 60.0


@pytest.fixture
async def server(comfy_server, tmp_path: Path) -> Any:
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    for name in ("loop_pack", "anytype_pack"):
        (custom_nodes / name).symlink_to(PACKS / name, target_is_directory=True)
    return await comfy_server(plugins=PLUGINS, custom_nodes_dir=[str(custom_nodes)])


async def _run(server: Any, prompt: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """POST the prompt, then read the WebSocket up to the prompt's end; (prompt_id, messages).

    The end is ``executing`` with ``node: null``: history holds the prompt by then.
    """
    client_id = uuid.uuid4().hex
    ws = await server.ws(client_id)
    try:
        status, body = await server.json("POST", "/prompt", json={"prompt": prompt, "client_id": client_id})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        messages: list[dict[str, Any]] = []

        async def collect() -> None:
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
                    continue
                data = json.loads(msg.data)
                messages.append(data)
                d = data["data"]
                if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                    return

        await asyncio.wait_for(collect(), RUN_TIMEOUT)
        return prompt_id, messages
    finally:
        await ws.close()


def _final(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The outcome message (``execution_success`` or ``execution_error``)."""
    outcomes = [m for m in messages if m["type"] in ("execution_success", "execution_error")]
    assert len(outcomes) == 1, messages
    return outcomes[0]


async def _history_outputs(server: Any, prompt_id: str) -> dict[str, Any]:
    status, body = await server.json("GET", f"/history/{prompt_id}")
    assert status == 200
    entry = body[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]


# --- hidden literal inputs --------------------------------------------------------------------


async def test_self_cloning_countdown_terminates(server):
    prompt = {
        "1": {"class_type": "LoopCountdown", "inputs": {"start": 5}},
        "2": {"class_type": "LoopShow", "inputs": {"value": ["1", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    # Five clones, each given its hidden ``remaining`` one lower than its parent's.
    assert (await _history_outputs(server, prompt_id))["2"] == {"value": [5]}


async def test_for_loop_clones_body_with_hidden_index(server):
    prompt = {
        "1": {"class_type": "LoopOpen", "inputs": {"total": 4, "value": 10}},
        "2": {"class_type": "LoopAddInt", "inputs": {"a": ["1", 2], "b": ["1", 1]}},
        "3": {"class_type": "LoopClose", "inputs": {"flow": ["1", 0], "value": ["2", 0]}},
        "4": {"class_type": "LoopShow", "inputs": {"value": ["3", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    # 10 + 0 + 1 + 2 + 3: each round's copy of the open node got its index as a hidden literal.
    assert (await _history_outputs(server, prompt_id))["4"] == {"value": [16]}
    # The copies report the visible nodes' ids, as the packs' override_display_id asks.
    executing = [m["data"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
    assert {d["display_node"] for d in executing} == {"1", "2", "3", "4"}
    assert any(d["node"].startswith("3.0.0.") for d in executing)


async def test_hidden_literal_given_in_the_prompt_reaches_the_function(server):
    prompt = {
        "1": {"class_type": "LoopOpen", "inputs": {"total": 1, "value": 0, "index": 7}},
        "2": {"class_type": "LoopShow", "inputs": {"value": ["1", 1]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    assert (await _history_outputs(server, prompt_id))["2"] == {"value": [7]}


async def test_hidden_literal_is_part_of_the_cache_key(server):
    outputs = []
    for index in (7, 8, 7):
        prompt = {
            "1": {"class_type": "LoopOpen", "inputs": {"total": 1, "value": 0, "index": index}},
            "2": {"class_type": "LoopShow", "inputs": {"value": ["1", 1]}},
        }
        prompt_id, messages = await _run(server, prompt)
        assert _final(messages)["type"] == "execution_success", _final(messages)
        outputs.append((await _history_outputs(server, prompt_id))["2"])
    assert outputs == [{"value": [7]}, {"value": [8]}, {"value": [7]}]


async def test_loop_runs_again_from_cache_and_after_a_change(server):
    def prompt(total: int) -> dict[str, Any]:
        return {
            "1": {"class_type": "LoopOpen", "inputs": {"total": total, "value": 10}},
            "2": {"class_type": "LoopAddInt", "inputs": {"a": ["1", 2], "b": ["1", 1]}},
            "3": {"class_type": "LoopClose", "inputs": {"flow": ["1", 0], "value": ["2", 0]}},
            "4": {"class_type": "LoopShow", "inputs": {"value": ["3", 0]}},
        }

    results = []
    for total in (3, 3, 5):
        prompt_id, messages = await _run(server, prompt(total))
        assert _final(messages)["type"] == "execution_success", _final(messages)
        results.append((await _history_outputs(server, prompt_id))["4"])
    assert results == [{"value": [13]}, {"value": [13]}, {"value": [20]}]


async def test_hidden_literal_reaches_the_custom_validator(server):
    prompt = {
        "1": {"class_type": "LoopCountdown", "inputs": {"start": 3, "remaining": -1}},
        "2": {"class_type": "LoopShow", "inputs": {"value": ["1", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400, body
    details = {e["details"] for e in body["node_errors"]["1"]["errors"]}
    assert "remaining - remaining must not be negative" in details


async def test_link_into_hidden_input_is_resolved(server):
    prompt = {
        "1": {"class_type": "LoopCountdown", "inputs": {"start": 2}},
        "2": {"class_type": "LoopOpen", "inputs": {"total": 1, "index": ["1", 0]}},
        "3": {"class_type": "LoopShow", "inputs": {"value": ["2", 1]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    assert (await _history_outputs(server, prompt_id))["3"] == {"value": [2]}


async def test_special_token_wins_over_a_prompt_value(server):
    # ``unique_id`` is UNIQUE_ID: a value the client sends for it must not replace the node id.
    prompt = {
        "7": {"class_type": "LoopCountdown", "inputs": {"start": 1, "unique_id": "1.2.3.4" * 100}},
        "8": {"class_type": "LoopShow", "inputs": {"value": ["7", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    assert (await _history_outputs(server, prompt_id))["8"] == {"value": [1]}


# --- str-subclass types -------------------------------------------------------------------------


async def test_object_info_shows_plain_type_strings(server):
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    assert info["AnySource"]["output"] == ["*"]
    assert info["AnySink"]["input"]["required"]["anything"] == ["*", {}]
    assert info["PackTypeSource"]["output"] == ["PACK_LATENT"]
    assert info["LoopOpen"]["input"]["hidden"]["index"] == ["*"]
    status, one = await server.json("GET", "/object_info/AnySink")
    assert status == 200 and one["AnySink"]["input"]["required"]["anything"] == ["*", {}]


async def test_any_output_feeds_int_and_image_inputs(server):
    prompt = {
        "1": {"class_type": "AnySource", "inputs": {"value": 3, "as_image": False}},
        "2": {"class_type": "IntSink", "inputs": {"number": ["1", 0]}},
        "3": {"class_type": "AnySource", "inputs": {"value": 4, "as_image": True}},
        "4": {"class_type": "ImageSink", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "AnySink", "inputs": {"anything": ["3", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    outputs = await _history_outputs(server, prompt_id)
    assert outputs["2"] == {"number": [3]}
    assert outputs["4"] == {"shape": [[1, 4, 4, 3]]}
    assert outputs["5"] == {"text": ["Tensor"]}


async def test_return_types_object_of_the_pack_answers_for_any_index(server):
    # Validation indexes the class's own RETURN_TYPES, so a ByPassTypeTuple's widening applies:
    # output 0 (PACK_FLOW) may feed an INT input and index 4, past the end, passes validation.
    prompt = {
        "1": {"class_type": "BypassSource", "inputs": {}},
        "2": {"class_type": "IntSink", "inputs": {"number": ["1", 0]}},
        "3": {"class_type": "AnySink", "inputs": {"anything": ["1", 4]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    outputs = await _history_outputs(server, prompt_id)
    assert outputs["2"] == {"number": ["flow"]}
    # A link past the outputs the node produced arrives as None, as in the reference.
    assert outputs["3"] == {"text": ["NoneType"]}
    status, info = await server.json("GET", "/object_info/BypassSource")
    assert info["BypassSource"]["output"] == ["PACK_FLOW", "INT"]


async def test_str_subclass_values_reach_ws_and_history_as_strings(server):
    prompt = {
        "1": {"class_type": "PackStringSource", "inputs": {"text": "hello"}},
        "2": {"class_type": "AnyEcho", "inputs": {"anything": ["1", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    assert _final(messages)["type"] == "execution_success", _final(messages)
    executed = [m["data"] for m in messages if m["type"] == "executed"]
    assert [(d["node"], d["output"]) for d in executed] == [("2", {"text": ["hello"]})]
    assert (await _history_outputs(server, prompt_id))["2"] == {"text": ["hello"]}
    status, job = await server.json("GET", f"/api/jobs/{prompt_id}")
    assert status == 200 and job["outputs"]["2"] == {"text": ["hello"]}


async def test_execution_error_with_str_subclass_inputs(server):
    prompt = {
        "1": {"class_type": "PackStringSource", "inputs": {"text": "boom"}},
        "2": {"class_type": "AnyFail", "inputs": {"anything": ["1", 0]}},
    }
    prompt_id, messages = await _run(server, prompt)
    error = _final(messages)
    assert error["type"] == "execution_error"
    assert error["data"]["exception_message"].strip() == "cannot use boom"
    assert error["data"]["current_inputs"] == {"anything": ["boom"]}
    status, body = await server.json("GET", f"/history/{prompt_id}")
    assert status == 200
    entry = body[prompt_id]
    assert entry["status"]["status_str"] == "error"
    [(_, data)] = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert data["current_inputs"] == {"anything": ["boom"]}
    status, job = await server.json("GET", f"/api/jobs/{prompt_id}")
    assert status == 200 and job["status"] == "failed"


async def _invalid(server: Any, prompt: dict[str, Any]) -> dict[str, Any]:
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400, body
    assert set(body) == {"error", "node_errors"}
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    return body["node_errors"]


async def test_missing_required_input_on_any_typed_node(server):
    node_errors = await _invalid(server, {"1": {"class_type": "AnySink", "inputs": {}}})
    [error] = node_errors["1"]["errors"]
    assert error["type"] == "required_input_missing"
    assert error["extra_info"] == {"input_name": "anything"}
    assert node_errors["1"]["class_type"] == "AnySink"


async def test_bad_link_into_any_typed_input(server):
    node_errors = await _invalid(server, {"1": {"class_type": "AnySink", "inputs": {"anything": ["x", 0, 1]}}})
    [error] = node_errors["1"]["errors"]
    assert error["type"] == "bad_linked_input"
    assert error["extra_info"]["input_config"] == ["*", {}]


async def test_link_to_missing_output_index(server):
    prompt = {
        "1": {"class_type": "AnySource", "inputs": {"value": 1, "as_image": False}},
        "2": {"class_type": "AnySink", "inputs": {"anything": ["1", 5]}},
    }
    node_errors = await _invalid(server, prompt)
    [error] = node_errors["2"]["errors"]
    assert error["type"] == "exception_during_validation"
    assert error["extra_info"]["exception_type"] == "IndexError"


async def test_link_to_missing_output_index_of_inner_node(server):
    prompt = {
        "1": {"class_type": "AnySource", "inputs": {"value": 1, "as_image": False}},
        "2": {"class_type": "LoopAddInt", "inputs": {"a": ["1", 3], "b": 1}},
        "3": {"class_type": "AnySink", "inputs": {"anything": ["2", 0]}},
    }
    node_errors = await _invalid(server, prompt)
    [error] = node_errors["2"]["errors"]
    assert error["type"] == "exception_during_inner_validation"
    assert error["extra_info"]["input_config"] == ["*", {}]
    assert error["extra_info"]["linked_node"] == ["2", 0]


async def test_wrong_type_linked_names_the_types_as_strings(server):
    prompt = {
        "1": {"class_type": "PackTypeSource", "inputs": {}},
        "2": {"class_type": "IntSink", "inputs": {"number": ["1", 0]}},
    }
    node_errors = await _invalid(server, prompt)
    [error] = node_errors["2"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "number, received_type(PACK_LATENT) mismatch input_type(INT)"
    assert error["extra_info"]["received_type"] == "PACK_LATENT"
    assert error["extra_info"]["input_config"] == ["INT", {"min": 0, "max": 100}]


async def test_bad_literal_for_any_typed_input_elsewhere_still_validates(server):
    # An out-of-range literal next to an any-typed link: the error body stays encodable.
    prompt = {
        "1": {"class_type": "AnySource", "inputs": {"value": 1000, "as_image": False}},
        "2": {"class_type": "AnySink", "inputs": {"anything": ["1", 0]}},
    }
    node_errors = await _invalid(server, prompt)
    assert [e["type"] for e in node_errors["1"]["errors"]] == ["value_bigger_than_max"]


# --- job detail ---------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "x" * 2000])
async def test_unknown_job_is_not_found(server, job_id: str):
    assert await server.json("GET", f"/api/jobs/{job_id}") == (404, {"error": "Job not found"})


async def test_jobs_routes_have_no_bare_twin(server):
    # The reference declares the jobs routes with their /api prefix only.
    status, _ = await server.json("GET", f"/jobs/{uuid.uuid4()}")
    assert status == 404
