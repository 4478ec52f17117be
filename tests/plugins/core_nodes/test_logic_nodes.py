"""Logic and small value nodes: Not/And/Or, If/Else Switch (lazy), Custom Combo, Math Expression,
Convert Number, Seed, Resolution Selector and the retired wanBlockSwap.

And/Or/Math Expression take V3 autogrow inputs (``values.value0``, ``values.a`` in a prompt) and
the switch's branches are lazy: the server tests check that only the chosen branch runs.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from plugins.core_nodes.expression import ExpressionError, evaluate
from plugins.core_nodes.nodes import logic

from .node_helpers import messages, run_prompt, start


def _previewed(frames: list[Any]) -> dict[str, str]:
    return {m["node"]: m["output"]["text"][0] for m in messages(frames, "executed")}


def _executing(frames: list[Any]) -> list[str]:
    return [m["node"] for m in messages(frames, "executing") if m["node"] is not None]


# --- pure behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(0, True), ("", True), (None, True), ([], True), ("x", False), (2, False)]
)
def test_not_uses_python_truthiness(value: Any, expected: bool) -> None:
    assert logic.ComfyNotNode().run(value) == (expected,)


def test_and_or() -> None:
    assert logic.ComfyAndNode().run({"value0": 1, "value1": "x"}) == (True,)
    assert logic.ComfyAndNode().run({"value0": 1, "value1": ""}) == (False,)
    assert logic.ComfyOrNode().run({"value0": 0, "value1": None, "value2": [0]}) == (True,)
    assert logic.ComfyOrNode().run({"value0": 0, "value1": False}) == (False,)


def test_switch_asks_only_for_the_selected_branch() -> None:
    node = logic.ComfySwitchNode()
    assert node.check_lazy_status(True, None, None) == ["on_true"]
    assert node.check_lazy_status(False, None, None) == ["on_false"]
    assert node.check_lazy_status(True, None, 5) == []
    assert node.run(True, "f", "t") == ("t",)
    assert node.run(False, "f", "t") == ("f",)


def test_custom_combo_passes_choice_and_index() -> None:
    assert logic.CustomCombo.VALIDATE_INPUTS(choice="typed by the user") is True
    assert logic.CustomCombo().run("b", 1, option0="a", option1="b") == ("b", 1)
    assert logic.CustomCombo().run("a") == ("a", 0)


@pytest.mark.parametrize(
    ("expression", "names", "expected"),
    [
        ("a + b", {"a": 2, "b": 3.5}, 5.5),
        ("a ** 2 - b // 2", {"a": 3, "b": 7}, 6),
        ("-a % 5", {"a": 7}, 3),
        ("a / b", {"a": 1, "b": 4}, 0.25),
        ("(a << 2) | 1 ^ 3 & 2", {"a": 1}, 4 | 1 ^ 3 & 2),
        ("~a", {"a": 5}, -6),
        ("a if a > b else b", {"a": 1, "b": 9}, 9),
        ("1 < a <= 3 < b", {"a": 3, "b": 4}, True),
        ("1 < a <= 2 < b", {"a": 3, "b": 4}, False),
        ("not a or b and 7", {"a": 1, "b": 2}, 7),
        ("a in values and 4 not in values", {"a": 1, "values": [1, 2]}, True),
        ("sum(values) / len_", {"values": [1, 2, 3], "len_": 3}, 2.0),
        ("sum(a, b, 4)", {"a": 1, "b": 2}, 7),
        ("max(values) - min(a, b)", {"a": 1, "b": 2, "values": [5, 9]}, 8),
        ("round(a, 2) + abs(-1)", {"a": 1.23456}, 2.23),
        ("sqrt(16) + ceil(0.2) + floor(-0.2)", {}, 4.0),
        ("log(e_, e_) + log2(8) + log10(1000)", {"e_": math.e}, 7.0),
        ("sin(0) + cos(0) + tan(0)", {}, 1.0),
        ("int(a) + float('2.5') + pow(2, 3)", {"a": 3.9}, 13.5),
        ("values[-1] + values[0:2][1]", {"values": [1, 2, 3]}, 5),
        ("True + a", {"a": 1}, 2),
    ],
)
def test_expression_values(expression: str, names: dict[str, Any], expected: Any) -> None:
    assert evaluate(expression, names) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "only these functions may be called"),
        ("a.__class__", r"attribute access \(.__class__\)"),
        ("(1).real", "attribute access"),
        ("open('x')", "only these functions may be called"),
        ("(lambda: 1)()", "only these functions"),
        ("[x for x in values]", "ListComp syntax is not allowed"),
        ("[1, 2]", "List syntax is not allowed"),
        ("{'a': 1}", "Dict syntax is not allowed"),
        ("a := 3", "invalid expression"),
        ("a = 3", "is a statement"),
        ("import os", "is a statement"),
        ("   ", "empty"),
        ("b", r"'b' is not defined \(known names: a\)"),
        ("sqrt", "is a function"),
        ("1 / 0", "ZeroDivisionError"),
        ("sqrt(-1)", "math domain error"),
        ("9 ** 9 ** 9", "too large"),
        ("3999999 ** 3999999", "too large"),
        ("pow(2, 5000)", "exponent 5000 is larger than 4000"),
        ("1 << 100000", "larger than 10000"),
        ("'ab' * 10 ** 6", "longer than 100000"),
        ("a @ a", "MatMult is not allowed"),
        ("sum(*values)", r"\* and \*\* arguments"),
        ("b'x'", "constant b'x' is not allowed"),
        ("-" * 50000 + "1", "nested too deeply"),
        ("a +", "invalid expression"),
    ],
)
def test_expression_refuses_what_is_not_allowed(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, {"a": 1})


def test_math_node_outputs_float_int_and_bool() -> None:
    node = logic.ComfyMathExpression()
    assert node.run("a / b", {"a": 7, "b": 2}) == (3.5, 3, True)
    assert node.run("a - a", {"a": 1.5}) == (0.0, 0, False)
    assert node.run("-a / 2", {"a": 7}) == (-3.5, -3, True)  # int() truncates toward zero
    assert node.run("a > 1", {"a": 2}) == (1.0, 1, True)  # a boolean result counts as a number
    assert node.run("a + b", {"a": True, "b": True}) == (2.0, 2, True)
    with pytest.raises(ValueError, match="must give a number, got str"):
        node.run("'text'", {"a": 1})
    with pytest.raises(ValueError, match="too large for a float"):
        node.run("2 ** 2000", {"a": 1})
    with pytest.raises(ValueError, match="non-finite"):
        node.run("a * 1e308 * 10", {"a": 1.0})
    with pytest.raises(
        ValueError, match=r"Math Expression 'c': 'c' is not defined \(known names: a, values\)"
    ):
        node.run("c", {"a": 1})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, (1.0, 1)),
        (False, (0.0, 0)),
        (7, (7.0, 7)),
        (-2.9, (-2.9, -2)),
        ("  42  ", (42.0, 42)),
        ("3.75", (3.75, 3)),
        ("-1e3", (-1000.0, -1000)),
        ("12345678901234567890", (1.2345678901234567e19, 12345678901234567890)),  # exact int
    ],
)
def test_number_convert(value: Any, expected: tuple[float, int]) -> None:
    out = logic.ComfyNumberConvert().run(value)
    assert out == expected and type(out[0]) is float and type(out[1]) is int


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValueError, "empty"),
        ("   ", ValueError, "empty"),
        ("abc", ValueError, "'abc' is not a number"),
        ("inf", ValueError, "not a finite number"),
        ("nan", ValueError, "not a finite number"),
        (float("inf"), ValueError, "not a finite number"),
        ([1], TypeError, "cannot convert a list"),
    ],
)
def test_number_convert_errors(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        logic.ComfyNumberConvert().run(value)


def _expected_resolution(ratio: tuple[int, int], megapixels: float, multiple: int) -> tuple[int, int]:
    # Written independently: the side lengths of an area of megapixels * 2^20 in ratio w:h.
    w, h = ratio
    height = math.sqrt(megapixels * 2**20 * h / w)
    width = height * w / h
    return round(width / multiple) * multiple, round(height / multiple) * multiple


def test_resolution_selector_by_hand() -> None:
    node = logic.ResolutionSelector()
    assert node.run("1:1 (Square)", 1.0, 8) == (1024, 1024)
    assert node.run("16:9 (Widescreen)", 1.0, 8) == (1368, 768)
    assert node.run("9:16 (Portrait Widescreen)", 1.0, 8) == (768, 1368)
    assert node.run("21:9 (Ultrawide)", 2.0, 64) == (2240, 960)


@pytest.mark.parametrize("ratio", list(logic.ASPECT_RATIOS))
@pytest.mark.parametrize(("megapixels", "multiple"), [(0.1, 8), (0.5, 16), (1.3, 12), (16.0, 128)])
def test_resolution_selector_formula(ratio: str, megapixels: float, multiple: int) -> None:
    width, height = logic.ResolutionSelector().run(ratio, megapixels, multiple)
    assert (width, height) == _expected_resolution(logic.ASPECT_RATIOS[ratio], megapixels, multiple)
    assert width % multiple == 0 and height % multiple == 0


def test_seed_and_wan_block_swap_pass_their_input_on() -> None:
    assert logic.SeedNode().run(2**63 - 1) == (2**63 - 1,)
    model = object()
    assert logic.wanBlockSwap().run(model)[0] is model


# --- through the server -------------------------------------------------------------------------


async def test_interface_extras_the_frontend_reads(comfy_server: Any) -> None:
    server = await start(comfy_server)
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    switch = info["ComfySwitchNode"]
    assert switch["output_matchtypes"] == ["switch"]
    assert switch["experimental"] is True
    assert info["CustomCombo"]["experimental"] is True
    assert info["wanBlockSwap"]["deprecated"] is True and info["wanBlockSwap"]["display_name"] is None


async def test_logic_and_math_through_the_server(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt: dict[str, Any] = {
        "seed": {"class_type": "SeedNode", "inputs": {"seed": 12}},
        "num": {"class_type": "ComfyNumberConvert", "inputs": {"value": " 2.5 "}},
        "math": {
            "class_type": "ComfyMathExpression",
            # a and c linked, b left out: values is [a, c] in slot order.
            "inputs": {"expression": "a * c + values[1]", "values.c": ["num", 0], "values.a": ["seed", 0]},
        },
        "len": {"class_type": "StringLength", "inputs": {"string": "abc"}},
        "and": {
            "class_type": "ComfyAndNode",
            "inputs": {"values.value0": ["len", 0], "values.value1": ["math", 2]},
        },
        "or": {"class_type": "ComfyOrNode", "inputs": {"values.value0": 0, "values.value1": ""}},
        "not": {"class_type": "ComfyNotNode", "inputs": {"value": ["or", 0]}},
        "res": {
            "class_type": "ResolutionSelector",
            "inputs": {"aspect_ratio": "3:2 (Photo)", "megapixels": 1.0, "multiple": 8},
        },
    }
    shows = {"math": 0, "and": 0, "or": 0, "not": 0, "num": 1, "res": 0}
    for node_id, index in shows.items():
        prompt[f"show_{node_id}"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, index]}}
    prompt["show_height"] = {"class_type": "PreviewAny", "inputs": {"source": ["res", 1]}}
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    assert _previewed(frames) == {
        "show_math": "32.5",  # 12 * 2.5 + 2.5
        "show_and": "True",
        "show_or": "False",
        "show_not": "True",
        "show_num": "2",
        "show_res": "1256",  # 3:2 at 2^20 pixels: 1254.1 x 836.1, to multiples of 8
        "show_height": "840",
    }


async def test_autogrow_minimum_is_validated(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "and": {"class_type": "ComfyAndNode", "inputs": {"values.value1": True}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["and", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    (error,) = body["node_errors"]["and"]["errors"]
    assert error["type"] == "required_input_missing"
    assert error["details"] == "value0" and error["extra_info"]["input_name"] == "values.value0"


async def test_switch_runs_only_the_chosen_branch(comfy_server: Any) -> None:
    server = await start(comfy_server)

    def prompt(pattern: str) -> dict[str, Any]:
        return {
            "cond": {
                "class_type": "StringContains",
                "inputs": {"string": pattern, "substring": "(", "case_sensitive": True},
            },
            "good": {
                "class_type": "StringConcatenate",
                "inputs": {"string_a": "fine", "string_b": "", "delimiter": ""},
            },
            # Fails when it runs: its pattern does not compile whenever "cond" is true.
            "bad": {
                "class_type": "RegexReplace",
                "inputs": {"string": "x", "regex_pattern": pattern, "replace": ""},
            },
            "switch": {
                "class_type": "ComfySwitchNode",
                "inputs": {"switch": ["cond", 0], "on_true": ["good", 0], "on_false": ["bad", 0]},
            },
            "show": {"class_type": "PreviewAny", "inputs": {"source": ["switch", 0]}},
        }

    frames = await run_prompt(server, prompt("(broken"))
    assert not messages(frames, "execution_error")
    assert _previewed(frames) == {"show": "fine"}
    assert "bad" not in _executing(frames) and "good" in _executing(frames)

    frames = await run_prompt(server, prompt("x"))  # cond false: the other branch runs
    assert not messages(frames, "execution_error")
    assert _previewed(frames) == {"show": ""}
    assert "good" not in _executing(frames)

    # A branch given as a literal needs nothing computed.
    literal = {
        "switch": {
            "class_type": "ComfySwitchNode",
            "inputs": {"switch": False, "on_true": ["never", 0], "on_false": "lit"},
        },
        "never": {
            "class_type": "RegexReplace",
            "inputs": {"string": "x", "regex_pattern": "(", "replace": ""},
        },
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["switch", 0]}},
    }
    frames = await run_prompt(server, literal)
    assert not messages(frames, "execution_error")
    assert _previewed(frames) == {"show": "lit"}


async def test_switch_output_links_to_any_input_type(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "a": {"class_type": "PrimitiveInt", "inputs": {"value": 640}},
        "b": {"class_type": "PrimitiveInt", "inputs": {"value": 512}},
        "switch": {
            "class_type": "ComfySwitchNode",
            "inputs": {"switch": True, "on_true": ["a", 0], "on_false": ["b", 0]},
        },
        # An INT input fed by the match-type output: validation accepts it.
        "math": {
            "class_type": "ComfyMathExpression",
            "inputs": {"expression": "a // 64", "values.a": ["switch", 0]},
        },
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["math", 1]}},
    }
    frames = await run_prompt(server, prompt)
    assert _previewed(frames) == {"show": "10"}
    assert "b" not in _executing(frames)


async def test_math_and_convert_errors_are_node_errors(comfy_server: Any) -> None:
    server = await start(comfy_server)
    for node, inputs, text in (
        ("ComfyMathExpression", {"expression": "a.__class__", "values.a": 1}, "attribute access"),
        ("ComfyMathExpression", {"expression": "a / (a - 1)", "values.a": 1}, "ZeroDivisionError"),
        ("ComfyMathExpression", {"expression": "a + b", "values.a": 1}, "'b' is not defined"),
        ("ComfyNumberConvert", {"value": "twelve"}, "'twelve' is not a number"),
    ):
        prompt = {
            "n": {"class_type": node, "inputs": inputs},
            "show": {"class_type": "PreviewAny", "inputs": {"source": ["n", 0]}},
        }
        frames = await run_prompt(server, prompt)
        (error,) = messages(frames, "execution_error")
        assert error["node_id"] == "n" and text in error["exception_message"], error["exception_message"]


async def test_custom_combo_accepts_the_users_options(comfy_server: Any) -> None:
    server = await start(comfy_server)
    # What the frontend sends: the chosen option, its index and the typed-in options.
    inputs = {"choice": "blue", "index": 1, "option0": "red", "option1": "blue", "option2": ""}
    prompt = {
        "combo": {"class_type": "CustomCombo", "inputs": inputs},
        "s": {"class_type": "PreviewAny", "inputs": {"source": ["combo", 0]}},
        "i": {"class_type": "PreviewAny", "inputs": {"source": ["combo", 1]}},
    }
    frames = await run_prompt(server, prompt)
    assert not messages(frames, "execution_error")
    assert _previewed(frames) == {"s": "blue", "i": "1"}


async def test_seed_range_is_validated(comfy_server: Any) -> None:
    server = await start(comfy_server)
    prompt = {
        "seed": {"class_type": "SeedNode", "inputs": {"seed": -1}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["seed", 0]}},
    }
    status, body = await server.json("POST", "/prompt", json={"prompt": prompt})
    assert status == 400
    assert [e["type"] for e in body["node_errors"]["seed"]["errors"]] == ["value_smaller_than_min"]
