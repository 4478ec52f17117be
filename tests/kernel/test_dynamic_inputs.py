"""V3 autogrow inputs: declared once, checked and passed as slots ``<input>.<slot>``, folded back."""

from __future__ import annotations

from typing import Any

from kernel.nodes import node_spec
from kernel.nodes.dynamic import autogrow_slots, expand_autogrow, folding
from kernel.registry import NodeEntry


def _names_template(minimum: int) -> dict[str, Any]:
    return {"input": {"required": {"value": ("FLOAT", {})}}, "names": ["a", "b", "c"], "min": minimum}


class Collect:
    """A V1 node with an autogrow input between two ordinary ones."""

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "first": ("INT", {}),
                "values": ("COMFY_AUTOGROW_V3", {"template": _names_template(2)}),
            },
            "optional": {"last": ("INT", {})},
        }

    def run(self, first: int, values: dict[str, Any], last: int = 0) -> tuple[str]:
        return (f"{first}|{values}|{last}",)


def test_expansion_makes_the_first_min_slots_required() -> None:
    types = expand_autogrow(Collect.INPUT_TYPES())
    assert list(types["required"]) == ["first", "values.a", "values.b"]
    assert set(types["optional"]) == {"values.c", "last"}
    assert types["required"]["values.a"] == ("FLOAT", {})


def test_prefix_templates_number_their_slots() -> None:
    template = {"input": {"required": {"value": ("*", {})}}, "prefix": "value", "min": 1, "max": 3}
    types = expand_autogrow({"required": {"values": ("COMFY_AUTOGROW_V3", {"template": template})}})
    assert list(types["required"]) == ["values.value0"]
    assert list(types["optional"]) == ["values.value1", "values.value2"]


def test_declarations_without_autogrow_are_returned_as_they_are() -> None:
    types = {"required": {"x": ("INT", {})}}
    assert expand_autogrow(types) is types
    assert autogrow_slots(types) == {}


def test_folding_gathers_slots_in_template_order_and_gives_empty_dicts() -> None:
    def node(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    fn = folding(node, {"values": ("a", "b", "c")})
    folded = fn(**{"values.c": 3, "first": 1, "values.a": 0})
    assert folded == {"first": 1, "values": {"a": 0, "c": 3}}
    assert list(folded["values"]) == ["a", "c"]
    assert fn(first=1) == {"first": 1, "values": {}}


def test_the_node_function_receives_folded_slots() -> None:
    spec = node_spec(NodeEntry("Collect", Collect, "tests", None))
    fn = spec.function(spec.make_instance())
    assert fn(first=1, **{"values.b": 2.5, "values.a": 1.5}) == ("1|{'a': 1.5, 'b': 2.5}|0",)
    assert "values" in spec.input_types()["required"]  # published as one input
    assert "values.a" in spec.execution_input_types()["required"]
