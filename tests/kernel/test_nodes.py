"""The node contract: NodeSpec over V1 and V3 classes, results, GraphBuilder, ExecutionBlocker."""

from __future__ import annotations

import asyncio
import inspect
import math
from typing import Any

import pytest

import kernel
from kernel.nodes import (
    ExecutionBlocker,
    GraphBuilder,
    NodeResult,
    NodeSpec,
    add_graph_prefix,
    graph_prefix_scope,
    is_link,
    is_v3_class,
    node_spec,
    node_specs,
)
from kernel.nodes import v3 as io
from kernel.registry import NodeEntry
from tests.nodepack import basic


def spec_of(cls: type, name: str | None = None, display_name: str | None = None) -> NodeSpec:
    return node_spec(NodeEntry(name or cls.__name__, cls, "testpack", display_name))


# --- V1 -----------------------------------------------------------------------------------------


def test_v1_spec_attributes() -> None:
    spec = spec_of(basic.TestMeta, display_name="Meta!")
    assert not spec.is_v3 and not is_v3_class(basic.TestMeta)
    assert (spec.name, spec.plugin, spec.display_name) == ("TestMeta", "testpack", "Meta!")
    assert spec.return_types == ("INT", "STRING")
    assert spec.return_names == ("number", "label")
    assert spec.output_is_list == (True, False)
    assert spec.input_is_list is True
    assert spec.is_output_node is False
    assert spec.not_idempotent is True
    assert spec.has_unique_id_hidden is True
    assert spec.lazy_inputs == {"maybe"}
    assert spec.raw_link_inputs == {"raw"}
    assert spec.hidden_inputs() == {
        "unique_id": "UNIQUE_ID",
        "prompt": "PROMPT",
        "extra_pnginfo": "EXTRA_PNGINFO",
        "dynprompt": "DYNPROMPT",
    }
    assert spec.input_info("maybe") == ("INT", "required", {"lazy": True})
    assert spec.input_info("label").category == "optional"
    assert spec.input_info("unique_id") == ("UNIQUE_ID", "hidden", {})
    assert spec.input_info("nope") is None
    assert spec.is_changed is not None and math.isnan(spec.is_changed(value=1))
    assert spec.validate_inputs is None
    assert spec.validate_signature == ([], False)


def test_v1_defaults() -> None:
    spec = spec_of(basic.TestSink)
    assert spec.display_name == "TestSink"
    assert spec.return_names == () and spec.output_is_list == ()
    assert spec.is_output_node is True
    assert spec.not_idempotent is False and spec.has_unique_id_hidden is False
    assert spec.is_changed is None
    assert spec.check_lazy_status(spec.make_instance()) is None
    assert spec_of(basic.TestInt).output_is_list == (False,)
    assert spec_of(basic.TestInt).return_names == ("INT",)
    assert spec_of(basic.TestTruthyOutput).is_output_node is False


def test_v1_function_and_lazy_check() -> None:
    spec = spec_of(basic.TestMeta)
    instance = spec.make_instance()
    assert isinstance(instance, basic.TestMeta)
    assert spec.function(instance)(value=[1, 2]) == ([1, 2], "meta")
    assert spec.check_lazy_status(instance)(value=[1], maybe=None) == ["maybe"]
    assert spec.is_async is False


def test_validate_signature_counts_cls() -> None:
    assert spec_of(basic.TestValidated).validate_signature == (["cls", "value"], False)
    assert spec_of(basic.TestAsyncValidated).validate_signature == (["cls"], True)
    assert spec_of(basic.TestValidateTypes).validate_signature == (["cls", "input_types"], False)


def test_normalize_v1_results() -> None:
    spec = spec_of(basic.TestBlocker)  # two outputs
    assert spec.normalize_result((1, 2)) == NodeResult((1, 2), None, None)
    assert spec.normalize_result([1, 2]) == NodeResult((1, 2), None, None)
    assert spec.normalize_result({"ui": {"a": [1]}}) == NodeResult(None, {"a": [1]}, None)
    assert spec.normalize_result({"ui": {"a": [1]}, "result": (3, 4)}) == NodeResult((3, 4), {"a": [1]}, None)
    graph = {"x": {"class_type": "TestInt", "inputs": {"value": 1}}}
    assert spec.normalize_result({"expand": graph, "result": (["x", 0], 5)}) == NodeResult(
        (["x", 0], 5), None, graph
    )
    assert spec.normalize_result(None) == NodeResult(None, None, None)
    with pytest.raises(TypeError, match="TestBlocker returned int"):
        spec.normalize_result(7)


def test_bare_blocker_is_widened() -> None:
    spec = spec_of(basic.TestBlocker)
    blocker = ExecutionBlocker("stop")
    assert spec.normalize_result(blocker).outputs == (blocker, blocker)
    assert spec.normalize_result({"result": blocker}).outputs == (blocker, blocker)
    # A blocker inside a result tuple stays where it is.
    assert spec.normalize_result((blocker, 1)).outputs == (blocker, 1)
    assert repr(ExecutionBlocker(None)) == "ExecutionBlocker(None)"


# --- V3 -----------------------------------------------------------------------------------------


def test_v3_spec_attributes() -> None:
    spec = spec_of(basic.TestV3Scale)
    assert spec.is_v3 and is_v3_class(basic.TestV3Scale)
    assert spec.display_name == "Scale (V3)"
    assert spec.return_types == ("FLOAT",)
    assert spec.return_names == ("scaled",)
    assert spec.output_is_list == (False,)
    assert spec.is_output_node is False
    assert spec.lazy_inputs == {"offset"}
    assert spec.has_unique_id_hidden is True
    assert spec.input_types()["required"]["mode"] == ("COMBO", {"options": ["mul", "add"], "default": "mul"})
    assert spec.validate_signature == (["cls", "value"], False)
    assert spec.is_changed is None  # fingerprint_inputs not overridden
    assert spec.enable_expand is False


def test_v3_execute_receives_hidden_on_cls() -> None:
    spec = spec_of(basic.TestV3Scale)
    fn = spec.function(spec.make_instance())
    raw = fn(value=2.0, factor=3.0, mode="mul", unique_id="42")
    assert spec.normalize_result(raw) == NodeResult((6.0,), {"unique_id": ["42"]}, None)
    assert basic.TestV3Scale.hidden is None  # the per-call subclass carried it, not the class


def test_v3_validator_and_lazy_default() -> None:
    spec = spec_of(basic.TestV3Scale)
    assert spec.validate_inputs is not None
    assert spec.validate_inputs(value=-1.0) == "value must not be negative"
    lazy = spec.check_lazy_status(spec.make_instance())
    assert lazy is not None and lazy(value=1.0, offset=None) == ["offset"]


def test_v3_async_execute() -> None:
    spec = spec_of(basic.TestV3Sink)
    fn = spec.function(spec.make_instance())
    assert spec.is_async and inspect.iscoroutinefunction(fn)
    raw = asyncio.run(fn(value=1.5))
    assert spec.normalize_result(raw) == NodeResult((), {"value": [1.5]}, None)


def test_v3_node_output_forms() -> None:
    spec = spec_of(basic.TestV3List)
    assert spec.normalize_result(io.NodeOutput([1, 2], "x")) == NodeResult(([1, 2], "x"), None, None)
    assert spec.normalize_result(None) == NodeResult((), None, None)
    assert spec.normalize_result((1, "y")) == NodeResult((1, "y"), None, None)
    assert spec.normalize_result({"result": (1, "z"), "ui": {"t": [1]}}) == NodeResult(
        (1, "z"), {"t": [1]}, None
    )
    blocked = spec.normalize_result(io.NodeOutput(block_execution="nope"))
    assert [type(o) for o in blocked.outputs or ()] == [ExecutionBlocker, ExecutionBlocker]
    assert blocked.outputs[0].message == "nope"  # type: ignore[index]

    class UiHelper:
        def as_dict(self) -> dict[str, Any]:
            return {"images": []}

    assert spec.normalize_result(io.NodeOutput(1, "a", ui=UiHelper())).ui == {"images": []}
    # Expansion needs enable_expand in the schema.
    with pytest.raises(ValueError, match="enable_expand"):
        spec.normalize_result(io.NodeOutput(1, "a", expand={"n": {}}))


def test_v3_expand_allowed_when_enabled() -> None:
    class Expander(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id="Expander", outputs=[io.Int.Output()], enable_expand=True, not_idempotent=True
            )

        @classmethod
        def execute(cls) -> io.NodeOutput:
            return io.NodeOutput(["n", 0], expand={"n": {"class_type": "TestInt", "inputs": {"value": 1}}})

    spec = spec_of(Expander)
    result = spec.normalize_result(Expander.execute())
    assert result.expand == {"n": {"class_type": "TestInt", "inputs": {"value": 1}}}
    assert spec.not_idempotent is True
    assert spec.object_info()["output_name"] == ["INT"]


def test_v3_types_and_options() -> None:
    spec = io.Int.Input(
        "seed", default=1, min=0, max=9, raw_link=True, force_input=True, display_mode="number"
    )
    assert spec.as_v1() == (
        "INT",
        {"rawLink": True, "forceInput": True, "default": 1, "min": 0, "max": 9, "display": "number"},
    )
    assert io.Image.Input("image").as_v1() == ("IMAGE",)
    assert io.Custom("MY_DATA").Output(display_name="d").io_type == "MY_DATA"
    assert io.AnyType.Input("x", optional=True).optional is True
    holder = io.HiddenHolder({"unique_id": "3"})
    assert (holder.unique_id, holder.prompt) == ("3", None)
    assert asyncio.run(io.ComfyExtension().get_node_list()) == []


# --- registry cache and public surface ----------------------------------------------------------


def test_node_specs_cache(make_kernel: Any) -> None:
    k = make_kernel(plugins=[("testpack", basic)])
    specs = node_specs(k)
    assert specs is node_specs(k)
    assert specs.get("TestInt") is specs.get("TestInt")
    assert specs.get("Nope") is None and specs.get(["unhashable"]) is None  # type: ignore[arg-type]
    assert "TestInt" in specs and "Nope" not in specs
    assert specs.get("TestInt").display_name == "Test Int"  # type: ignore[union-attr]
    assert node_specs(make_kernel(plugins=[("testpack", basic)])) is not specs


def test_public_surface() -> None:
    assert kernel.ExecutionBlocker is ExecutionBlocker
    assert kernel.GraphBuilder is GraphBuilder
    assert kernel.NodeSpec is NodeSpec
    assert kernel.node_specs is node_specs


# --- GraphBuilder -------------------------------------------------------------------------------


def test_graph_builder_ids_in_a_node_scope() -> None:
    with graph_prefix_scope("5", 0):
        graph = GraphBuilder()
        first = graph.node("TestInt", value=1)
        second = graph.node("TestPassthrough", value=first.out(0))
        assert (first.id, second.id) == ("5.0.0.1", "5.0.0.2")
        assert graph.node("TestInt", id="1") is first  # same id → the same node
        assert GraphBuilder().node("TestInt").id == "5.0.1.1"  # the next builder of this call
    with graph_prefix_scope("5.0.0.2", 3):
        assert GraphBuilder().node("X").id == "5.0.0.2.3.0.1"
    assert GraphBuilder(prefix="p.").node("X").id == "p.1"


def test_graph_builder_finalize_and_edits() -> None:
    graph = GraphBuilder(prefix="")
    a = graph.node("TestInt", value=1)
    b = graph.node("TestPassthrough", value=a.out(0))
    c = graph.node("TestSink", value=a.out(0), extra=None)
    b.set_override_display_id("7")
    assert graph.finalize() == {
        "1": {"class_type": "TestInt", "inputs": {"value": 1}},
        "2": {"class_type": "TestPassthrough", "inputs": {"value": ["1", 0]}, "override_display_id": "7"},
        "3": {"class_type": "TestSink", "inputs": {"value": ["1", 0], "extra": None}},
    }
    c.set_input("extra", None)
    assert "extra" not in c.inputs and c.get_input("value") == ["1", 0]
    graph.replace_node_output("1", 0, 9)
    assert b.get_input("value") == 9 and c.get_input("value") == 9
    assert graph.lookup_node("2") is b
    graph.remove_node("2")
    assert graph.lookup_node("2") is None and set(graph.finalize()) == {"1", "3"}


def test_is_link_and_add_graph_prefix() -> None:
    assert is_link(["1", 0]) and is_link(["1", 0.0])
    assert not is_link(["1", True]) and not is_link([1, 0]) and not is_link(["1"]) and not is_link(("1", 0))
    graph = {
        "1": {"class_type": "A", "inputs": {"x": ["2", 0], "y": 3}},
        "2": {"class_type": "B", "inputs": {}},
    }
    new_graph, outputs = add_graph_prefix(graph, (["1", 0], 5), "p.")
    assert new_graph == {
        "p.1": {"class_type": "A", "inputs": {"x": ["p.2", 0], "y": 3}},
        "p.2": {"class_type": "B", "inputs": {}},
    }
    assert outputs == (["p.1", 0], 5)


def test_expand_node_result_ids() -> None:
    spec = spec_of(basic.TestExpand)
    with graph_prefix_scope("9", 1):
        raw = spec.function(spec.make_instance())(value=4, count=2)
    result = spec.normalize_result(raw)
    assert result.outputs == (["9.1.0.2", 0],)
    assert result.expand == {
        "9.1.0.1": {"class_type": "TestPassthrough", "inputs": {"value": 4}},
        "9.1.0.2": {"class_type": "TestPassthrough", "inputs": {"value": ["9.1.0.1", 0]}},
    }
