"""POST /prompt validation over real HTTP: every error type with its exact JSON."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kernel import hookimpl
from kernel.events import PromptQueued
from kernel.nodes import v3 as io
from tests.nodepack import basic


@pytest.fixture
async def server(comfy_server: Any) -> Any:
    srv = await comfy_server(plugins=[("testpack", basic)])
    srv.queued = []
    srv.kernel.bus.subscribe(lambda e: srv.queued.append(e.item) if isinstance(e, PromptQueued) else None)
    return srv


async def submit(server: Any, prompt: Any, **body: Any) -> tuple[int, Any]:
    return await server.json("POST", "/prompt", json={"prompt": prompt, **body})


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def failed(details: str, node_errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        },
        "node_errors": node_errors,
    }


def node_error(class_type: str, errors: list[dict[str, Any]], outputs: list[str]) -> dict[str, Any]:
    return {"errors": errors, "dependent_outputs": outputs, "class_type": class_type}


# --- prompt-level errors ------------------------------------------------------------------------


async def test_missing_class_type(server: Any) -> None:
    status, body = await submit(server, {"1": {"inputs": {}}})
    assert status == 400
    assert body == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'ID #1' has no class_type. The workflow may be corrupted or a custom node is missing.",
            "details": "Node ID '#1'",
            "extra_info": {"node_id": "1", "class_type": None, "node_title": None},
        },
        "node_errors": {},
    }


async def test_missing_class_type_uses_title(server: Any) -> None:
    status, body = await submit(server, {"7": {"inputs": {}, "_meta": {"title": "My node"}}})
    assert status == 400
    assert body["error"]["message"].startswith("Node 'My node' has no class_type.")
    assert body["error"]["extra_info"] == {"node_id": "7", "class_type": None, "node_title": "My node"}


async def test_unknown_class_anywhere_rejects(server: Any) -> None:
    prompt = {"1": node("TestSink", value=1), "2": node("Nope ")}  # "2" is unreachable from the output
    status, body = await submit(server, prompt)
    assert status == 400
    assert body == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'Nope ' not found. The custom node may not be installed.",
            "details": "Node ID '#2'",
            "extra_info": {"node_id": "2", "class_type": "Nope ", "node_title": "Nope "},
        },
        "node_errors": {},
    }


async def test_non_string_class_type_is_unknown(server: Any) -> None:
    status, body = await submit(server, {"1": {"class_type": ["x"], "inputs": {}}})
    assert status == 400
    assert body["error"]["type"] == "missing_node_type"


async def test_prompt_not_an_object(server: Any) -> None:
    status, body = await submit(server, ["not", "nodes"])
    assert status == 400
    assert body["error"]["type"] == "invalid_prompt"
    assert body["node_errors"] == {}


async def test_prompt_no_outputs(server: Any) -> None:
    expected = {
        "error": {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {},
    }
    assert await submit(server, {"1": node("TestInt", value=1)}) == (400, expected)
    # OUTPUT_NODE = 1 is truthy but not True: not an output.
    assert await submit(server, {"1": node("TestTruthyOutput")}) == (400, expected)


# --- partial execution --------------------------------------------------------------------------


async def test_partial_execution_targets(server: Any) -> None:
    prompt = {"1": node("TestSink", value=1), "2": node("TestSink"), "3": node("TestInt", value=1)}
    status, body = await submit(server, prompt, partial_execution_targets=["1"])
    assert (status, body["node_errors"]) == (200, {})
    assert server.queued[-1].outputs_to_execute == ["1"]

    status, body = await submit(server, prompt, partial_execution_targets=["2"])
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(body["node_errors"]) == ["2"]

    for targets in ([], ["3"], ["999"]):  # empty, non-output and unknown ids select nothing
        status, body = await submit(server, prompt, partial_execution_targets=targets)
        assert (status, body["error"]["type"]) == (400, "prompt_no_outputs")


async def test_partial_failure_is_200_with_node_errors(server: Any) -> None:
    prompt = {"1": node("TestSink", value=1), "2": node("TestSink")}
    status, body = await submit(server, prompt)
    assert status == 200
    assert body["node_errors"] == {
        "2": node_error(
            "TestSink",
            [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "value",
                    "extra_info": {"input_name": "value"},
                }
            ],
            ["2"],
        )
    }
    assert server.queued[-1].outputs_to_execute == ["1"]


# --- per-input errors ---------------------------------------------------------------------------


async def test_required_input_missing(server: Any) -> None:
    status, body = await submit(server, {"1": node("TestSink")})
    assert status == 400
    assert body == failed(
        "Required input is missing: value",
        {
            "1": node_error(
                "TestSink",
                [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "value",
                        "extra_info": {"input_name": "value"},
                    }
                ],
                ["1"],
            )
        },
    )


async def test_optional_input_may_be_absent(server: Any) -> None:
    status, body = await submit(server, {"1": node("TestSink", value=3)})
    assert (status, body["node_errors"]) == (200, {})


async def test_bad_linked_input(server: Any) -> None:
    status, body = await submit(server, {"1": node("TestSink", value=["2"])})
    assert status == 400
    assert body["node_errors"]["1"]["errors"] == [
        {
            "type": "bad_linked_input",
            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            "details": "value",
            "extra_info": {
                "input_name": "value",
                "input_config": ["INT", {"default": 0}],
                "received_value": ["2"],
            },
        }
    ]


async def test_return_type_mismatch(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestString", text="x")}
    status, body = await submit(server, prompt)
    assert status == 400
    mismatch = {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "value, received_type(STRING) mismatch input_type(INT)",
        "extra_info": {
            "input_name": "value",
            "input_config": ["INT", {"default": 0}],
            "received_type": "STRING",
            "linked_node": ["2", 0],
        },
    }
    assert body == failed(
        "Return type mismatch between linked nodes: value, received_type(STRING) mismatch input_type(INT)",
        {"1": node_error("TestSink", [mismatch], ["1"])},
    )


@pytest.mark.parametrize(
    ("source", "index", "sink"),
    [
        ("TestString", 0, "TestAnySink"),  # "*" accepts anything
        ("TestInt", 0, "TestUnionSink"),  # "FLOAT, INT" intersects "INT"
        ("TestPrimitives", 1, "TestUnionSink"),  # ... and "FLOAT"
    ],
)
async def test_type_compatibility(server: Any, source: str, index: int, sink: str) -> None:
    prompt = {"1": node(sink, value=["2", index]), "2": node(source)}
    inputs = {
        "TestString": {"text": "x"},
        "TestInt": {"value": 1},
        "TestPrimitives": {"i": 1, "f": 0.5, "s": "", "b": True},
    }
    prompt["2"]["inputs"] = inputs[source]
    status, body = await submit(server, prompt)
    assert (status, body["node_errors"]) == (200, {})


async def test_union_rejects_disjoint_type(server: Any) -> None:
    prompt = {"1": node("TestUnionSink", value=["2", 0]), "2": node("TestString", text="x")}
    status, body = await submit(server, prompt)
    assert status == 400
    assert (
        body["node_errors"]["1"]["errors"][0]["details"]
        == "value, received_type(STRING) mismatch input_type(FLOAT, INT)"
    )


async def test_invalid_input_type(server: Any) -> None:
    status, body = await submit(server, {"1": node("TestSink", value="abc")})
    assert status == 400
    assert body["node_errors"]["1"]["errors"] == [
        {
            "type": "invalid_input_type",
            "message": "Failed to convert an input value to a INT value",
            "details": "value, abc, invalid literal for int() with base 10: 'abc'",
            "extra_info": {
                "input_name": "value",
                "input_config": ["INT", {"default": 0}],
                "received_value": "abc",
                "exception_message": "invalid literal for int() with base 10: 'abc'",
            },
        }
    ]


async def test_literals_are_coerced_and_written_back(server: Any) -> None:
    prompt = {
        "1": node("TestSink", value=["2", 0]),
        "2": node("TestPrimitives", i=5.0, f="0.5", s=12, b=1, items={"__value__": [1, 2]}),
    }
    status, body = await submit(server, prompt)
    assert (status, body["node_errors"]) == (200, {})
    inputs = server.queued[-1].prompt["2"]["inputs"]
    assert inputs == {"i": 5, "f": 0.5, "s": "12", "b": True, "items": [1, 2]}
    assert type(inputs["i"]) is int and type(inputs["f"]) is float


async def test_value_smaller_than_min_reported_on_the_source(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestInt", value=-101)}
    status, body = await submit(server, prompt)
    assert status == 400
    config = ["INT", {"default": 0, "min": -100, "max": 100, "step": 1}]
    # The sink is invalid only because of its ancestor: it carries no errors and is not listed.
    assert body == failed(
        "",
        {
            "2": node_error(
                "TestInt",
                [
                    {
                        "type": "value_smaller_than_min",
                        "message": "Value -101 smaller than min of -100",
                        "details": "value",
                        "extra_info": {"input_name": "value", "input_config": config, "received_value": -101},
                    }
                ],
                ["1"],
            )
        },
    )


async def test_value_bigger_than_max(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestInt", value=101)}
    status, body = await submit(server, prompt)
    assert status == 400
    error = body["node_errors"]["2"]["errors"][0]
    assert (error["type"], error["message"], error["details"]) == (
        "value_bigger_than_max",
        "Value 101 bigger than max of 100",
        "value",
    )


async def test_float_min_max(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestPrimitives", i=1, f=1.5, s="", b=False)}
    status, body = await submit(server, prompt)
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["message"] == "Value 1.5 bigger than max of 1.0"


async def _combo(server: Any, **inputs: Any) -> tuple[int, Any]:
    return await submit(server, {"1": node("TestAnySink", value=["2", 0]), "2": node("TestCombo", **inputs)})


async def test_value_not_in_list(server: Any) -> None:
    status, body = await _combo(server, choice="z")
    assert status == 400
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "choice: 'z' not in ['a', 'b', 'c']",
            "extra_info": {
                "input_name": "choice",
                "input_config": [["a", "b", "c"], {"default": "a"}],
                "received_value": "z",
            },
        }
    ]


async def test_value_not_in_list_combo_forms(server: Any) -> None:
    assert (await _combo(server, choice="b", new_style="y", many={"__value__": ["p", "r"]}, big="choice_24"))[
        0
    ] == 200

    status, body = await _combo(server, choice="a", new_style="z")
    error = body["node_errors"]["2"]["errors"][0]
    assert (status, error["details"]) == (400, "new_style: 'z' not in ['x', 'y']")
    assert error["extra_info"]["input_config"] == ["COMBO", {"options": ["x", "y"]}]

    status, body = await _combo(server, choice="a", many={"__value__": ["p", "zz"]})
    assert (status, body["node_errors"]["2"]["errors"][0]["type"]) == (400, "value_not_in_list")

    # Long lists are summarized and their config withheld.
    status, body = await _combo(server, choice="a", big="nope")
    error = body["node_errors"]["2"]["errors"][0]
    assert error["details"] == "big: 'nope' not in (list of length 25)"
    assert error["extra_info"]["input_config"] is None


# --- custom validation --------------------------------------------------------------------------


async def _validated(server: Any, source: dict[str, Any]) -> tuple[int, Any]:
    return await submit(server, {"1": node("TestSink", value=["2", 0]), "2": source})


async def test_custom_validation_failed(server: Any) -> None:
    status, body = await _validated(server, node("TestValidated", value=3, other=0))
    assert status == 400
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "value - 3 is odd",
            "extra_info": {"input_name": "value"},
        }
    ]


async def test_validator_owns_its_inputs_ranges(server: Any) -> None:
    # max is 10, but ``value`` is a validator parameter, so only the validator judges it.
    assert (await _validated(server, node("TestValidated", value=20, other=0)))[0] == 200


async def test_validator_sees_links_as_none(server: Any) -> None:
    prompt = {
        "1": node("TestSink", value=["2", 0]),
        "2": node("TestValidated", value=["3", 0], other=0),
        "3": node("TestInt", value=7),
    }
    status, body = await submit(server, prompt)
    assert (status, body["node_errors"]) == (200, {})


async def test_validator_with_input_types_skips_link_checks(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestValidateTypes", value=["3", 0])}
    prompt["3"] = node("TestString", text="x")  # STRING into INT: allowed, the validator decides
    assert (await submit(server, prompt))[0] == 200

    prompt["3"] = node("TestPrimitives", i=1, f=0.5, s="", b=True)
    prompt["2"]["inputs"]["value"] = ["3", 1]  # FLOAT: the validator refuses it
    status, body = await submit(server, prompt)
    assert status == 400
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "input_types - cannot take {'value': 'FLOAT'}",
            "extra_info": {"input_name": "input_types"},
        }
    ]


async def test_async_validator_with_kwargs(server: Any) -> None:
    # **kwargs: the validator owns every input, so max=5 is not checked; 13 is refused by it.
    assert (await _validated(server, node("TestAsyncValidated", value=12)))[0] == 200
    status, body = await _validated(server, node("TestAsyncValidated", value=13))
    assert status == 400
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "value",
            "extra_info": {"input_name": "value"},
        }
    ]


async def test_validator_is_not_called_without_an_input_it_takes(server: Any) -> None:
    # ``value`` is missing: the validator would only raise a TypeError about it, so the answer
    # is the missing input, not an exception with a traceback.
    status, body = await _validated(server, node("TestValidated", other=0))
    assert status == 400
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "value",
            "extra_info": {"input_name": "value"},
        }
    ]


# --- dynamic combos -----------------------------------------------------------------------------


class DynamicComboNode:
    """A dynamic combo: the ``scale`` option brings a ``factor`` widget, ``fixed`` brings none."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    ACCEPT_ALL_INPUTS = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        factor = ("FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0})
        options = [
            {"key": "scale", "inputs": {"required": {"factor": factor}}},
            {"key": "fixed", "inputs": {"required": {}}},
        ]
        return {"required": {"mode": ("COMFY_DYNAMICCOMBO_V3", {"options": options})}}

    def run(self, mode: str, **widgets: Any) -> dict[str, Any]:
        return {"ui": {"mode": [mode], "widgets": [widgets]}}


class DynamicComboPack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register("DynamicComboNode", DynamicComboNode)


async def test_dynamic_combo_choice_and_its_widgets_are_validated(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[("testpack", basic), ("dynpack", DynamicComboPack())])

    async def reasons(**inputs: Any) -> list[dict[str, Any]]:
        status, body = await submit(server, {"1": node("DynamicComboNode", **inputs)})
        assert (status == 200) == (not body["node_errors"]), body
        return [{k: e[k] for k in ("type", "details")} for e in body["node_errors"].get("1", {}).get("errors", [])]

    assert await reasons(mode="scale", **{"mode.factor": 1.5}) == []
    assert await reasons(mode="fixed") == []  # the other option's widget does not apply
    assert await reasons(mode="scale") == [{"type": "required_input_missing", "details": "factor"}]
    assert await reasons(mode="scale", **{"mode.factor": 3}) == [
        {"type": "value_bigger_than_max", "details": "mode.factor"}
    ]
    assert await reasons(mode="zoom") == [
        {"type": "value_not_in_list", "details": "mode: 'zoom' not in ['scale', 'fixed']"}
    ]


# --- exceptions ---------------------------------------------------------------------------------


async def test_exception_during_validation(server: Any) -> None:
    status, body = await submit(server, {"1": node("TestRaisingValidate", value=1)})
    assert status == 400
    (error,) = body["node_errors"]["1"]["errors"]
    assert error["type"] == "exception_during_validation"
    assert error["message"] == "Exception when validating node"
    assert error["details"] == "validator exploded"
    assert error["extra_info"]["exception_type"] == "RuntimeError"
    assert isinstance(error["extra_info"]["traceback"], list) and error["extra_info"]["traceback"]
    assert body["error"]["details"] == "Exception when validating node: validator exploded"


async def test_link_to_missing_node_fails_only_that_output(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["99", 0]), "2": node("TestSink", value=1)}
    status, body = await submit(server, prompt)
    assert status == 200
    (error,) = body["node_errors"]["1"]["errors"]
    assert (error["type"], error["details"], error["extra_info"]["exception_type"]) == (
        "exception_during_validation",
        "'99'",
        "KeyError",
    )
    assert body["node_errors"]["1"]["dependent_outputs"] == ["1"]


async def test_exception_during_inner_validation(server: Any) -> None:
    prompt = {
        "1": node("TestSink", value=["2", 0]),
        "2": node("TestPassthrough", value=["3", 0]),
        "3": node("TestBroken"),
    }
    status, body = await submit(server, prompt)
    assert status == 400
    assert list(body["node_errors"]) == ["3"]
    entry = body["node_errors"]["3"]
    assert (entry["class_type"], entry["dependent_outputs"]) == ("TestBroken", ["1"])
    (error,) = entry["errors"]
    assert error["type"] == "exception_during_inner_validation"
    assert error["message"] == "Exception when validating inner node"
    assert error["details"] == "broken node"
    info = error["extra_info"]
    assert info["input_name"] == "value"
    assert info["input_config"] == ["INT", {"default": 0}]
    assert info["linked_node"] == ["3", 0]
    assert (info["exception_message"], info["exception_type"]) == ("broken node", "ValueError")
    assert info["traceback"]


async def test_dependency_cycle(server: Any) -> None:
    prompt = {
        "1": node("TestSink", value=["2", 0]),
        "2": node("TestPassthrough", value=["3", 0]),
        "3": node("TestPassthrough", value=["2", 0]),
    }
    status, body = await submit(server, prompt)
    assert status == 400
    details = "2 (TestPassthrough) -> 3 (TestPassthrough) -> 2 (TestPassthrough)"
    assert body["node_errors"] == {
        node_id: node_error(
            "TestPassthrough",
            [
                {
                    "type": "dependency_cycle",
                    "message": "Dependency cycle detected",
                    "details": details,
                    "extra_info": {"node_id": node_id, "cycle_nodes": ["2", "3"]},
                }
            ],
            ["1"],
        )
        for node_id in ("3", "2")
    }


async def test_self_cycle(server: Any) -> None:
    prompt = {"1": node("TestSink", value=["2", 0]), "2": node("TestPassthrough", value=["2", 0])}
    status, body = await submit(server, prompt)
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["details"] == "2 (TestPassthrough) -> 2 (TestPassthrough)"


async def test_deep_chain_does_not_overflow(server: Any) -> None:
    depth = 2000
    prompt: dict[str, Any] = {"out": node("TestSink", value=["n0", 0])}
    for i in range(depth):
        prompt[f"n{i}"] = node("TestPassthrough", value=[f"n{i + 1}", 0])
    prompt[f"n{depth}"] = node("TestInt", value=500)  # out of range at the far end
    started = time.perf_counter()
    status, body = await submit(server, prompt)
    assert time.perf_counter() - started < 10
    assert status == 400
    assert list(body["node_errors"]) == [f"n{depth}"]

    prompt[f"n{depth}"]["inputs"]["value"] = 5
    status, body = await submit(server, prompt)
    assert (status, body["node_errors"]) == (200, {})


async def test_unreachable_invalid_nodes_are_ignored(server: Any) -> None:
    prompt = {"1": node("TestSink", value=1), "2": node("TestInt", value=10_000), "3": node("TestBroken")}
    status, body = await submit(server, prompt)
    assert (status, body["node_errors"]) == (200, {})


async def test_dependent_outputs_accumulate(server: Any) -> None:
    prompt = {
        "1": node("TestSink", value=["3", 0]),
        "2": node("TestSink", value=["3", 0]),
        "3": node("TestInt", value=500),
        "4": node("TestSink", value=2),
        "5": node("TestSink"),
    }
    status, body = await submit(server, prompt)
    assert status == 200
    assert body["node_errors"]["3"]["dependent_outputs"] == ["1", "2"]
    assert body["node_errors"]["5"]["dependent_outputs"] == ["5"]
    assert server.queued[-1].outputs_to_execute == ["4"]


# --- V3 nodes -----------------------------------------------------------------------------------


async def test_v3_validation(server: Any) -> None:
    def scale(**inputs: Any) -> dict[str, Any]:
        return {"1": node("TestV3Sink", value=["2", 0]), "2": node("TestV3Scale", **inputs)}

    status, body = await submit(server, scale(value=1, factor=3, mode="add"))
    assert (status, body["node_errors"]) == (200, {})
    assert type(server.queued[-1].prompt["2"]["inputs"]["value"]) is float  # FLOAT coercion

    status, body = await submit(server, scale(value=1, factor=11, mode="mul"))
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"

    status, body = await submit(server, scale(value=1, factor=1, mode="div"))
    error = body["node_errors"]["2"]["errors"][0]
    assert (error["type"], error["details"]) == ("value_not_in_list", "mode: 'div' not in ['mul', 'add']")

    status, body = await submit(server, scale(value=-1, factor=1, mode="mul"))
    assert body["node_errors"]["2"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "value - value must not be negative",
            "extra_info": {"input_name": "value"},
        }
    ]

    status, body = await submit(server, {"1": node("TestV3Sink")})
    assert status == 400
    assert body["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"

    status, body = await submit(
        server, {"1": node("TestAnySink", value=["2", 1]), "2": node("TestV3List", count=101)}
    )
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"


class BrokenSchema(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        raise RuntimeError("no schema today")

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput()


class BrokenSchemaPack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register("BrokenSchema", BrokenSchema)


async def test_broken_v3_schema_never_500s(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[("testpack", basic), ("brokenpack", BrokenSchemaPack())])
    status, body = await submit(server, {"1": node("BrokenSchema")})
    assert (status, body["error"]["type"]) == (400, "prompt_no_outputs")
    # As an ancestor it is an inner validation exception of the output that reaches it.
    status, body = await submit(server, {"1": node("TestAnySink", value=["2", 0]), "2": node("BrokenSchema")})
    assert status == 400
    assert body["node_errors"]["1"]["errors"][0]["type"] == "exception_during_validation"
    status, info = await server.json("GET", "/object_info")
    assert status == 200 and "BrokenSchema" not in info and "TestInt" in info
