"""A prompt whose structure validated before: only its literals are checked again, with the
same results (conversion, errors) as the full walk, and never against stale declarations."""

from __future__ import annotations

from typing import Any

import pytest

from kernel import hookimpl
from kernel.events import PromptQueued
from tests.nodepack import basic

LIMIT = {"max": 10}


class Bounded:
    """An INT whose maximum changes while the server runs (as a combo's file list does)."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": LIMIT["max"]})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class BoundedPack:
    __name__ = "boundedpack"

    @staticmethod
    @hookimpl
    def register_nodes(register: Any) -> None:
        register("TestBounded", Bounded)


@pytest.fixture
async def server(comfy_server: Any) -> Any:
    LIMIT["max"] = 10
    srv = await comfy_server(plugins=[("testpack", basic), BoundedPack])
    srv.queued = []
    srv.kernel.bus.subscribe(lambda e: srv.queued.append(e.item) if isinstance(e, PromptQueued) else None)
    return srv


async def submit(server: Any, prompt: Any) -> tuple[int, Any]:
    return await server.json("POST", "/prompt", json={"prompt": prompt})


def chain(source: str, **inputs: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "TestSink", "inputs": {"value": ["2", 0]}},
        "2": {"class_type": source, "inputs": inputs},
    }


async def test_repeated_structure_converts_and_rejects_like_the_first_time(server: Any) -> None:
    assert (await submit(server, chain("TestInt", value=3)))[0] == 200
    status, body = await submit(server, chain("TestInt", value="7"))
    assert (status, body["node_errors"]) == (200, {})
    assert server.queued[-1].prompt["2"]["inputs"] == {"value": 7}
    status, body = await submit(server, chain("TestInt", value=-101))
    assert status == 400
    errors = body["node_errors"]["2"]["errors"]
    assert [e["type"] for e in errors] == ["value_smaller_than_min"]
    assert errors[0]["extra_info"]["received_value"] == -101
    status, body = await submit(server, chain("TestInt", value="abc"))
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["type"] == "invalid_input_type"


async def test_repeated_structure_sees_a_changed_declaration(server: Any) -> None:
    assert (await submit(server, chain("TestBounded", value=8)))[0] == 200
    LIMIT["max"] = 5
    status, body = await submit(server, chain("TestBounded", value=8))
    assert status == 400
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"
    assert (await submit(server, chain("TestBounded", value=4)))[0] == 200


async def test_repeated_structure_with_a_custom_validator_runs_it_every_time(server: Any) -> None:
    first, _ = await submit(server, chain("TestValidated", value=2, other=0))
    # odd: the class's own VALIDATE_INPUTS refuses it
    second, body = await submit(server, chain("TestValidated", value=3, other=0))
    assert (first, second) == (200, 400)
    assert body["node_errors"]["2"]["errors"][0]["details"].endswith("3 is odd")


async def test_a_changed_link_is_walked_again(server: Any) -> None:
    assert (await submit(server, chain("TestInt", value=3)))[0] == 200
    prompt = chain("TestInt", value=3)
    prompt["1"]["inputs"]["value"] = ["3", 0]  # a node that does not exist
    status, _ = await submit(server, prompt)
    assert status == 400


async def test_repeated_structure_with_a_wrapped_list_literal(server: Any) -> None:
    """Node 2's only literal is a wrapped list, which the walk unwraps into a list."""

    def prompt(items: Any) -> dict[str, Any]:
        source = {"i": 1, "f": 0.5, "s": "x", "b": True}
        linked = {name: ["3", slot] for slot, name in enumerate(source)}
        return {
            "1": {"class_type": "TestSink", "inputs": {"value": ["2", 0]}},
            "2": {"class_type": "TestPrimitives", "inputs": {**linked, "items": items}},
            "3": {"class_type": "TestPrimitives", "inputs": source},
        }

    assert (await submit(server, prompt({"__value__": [1, 2]})))[0] == 200
    assert server.queued[-1].prompt["2"]["inputs"]["items"] == [1, 2]
    assert (await submit(server, prompt({"__value__": [3]})))[0] == 200
    assert server.queued[-1].prompt["2"]["inputs"]["items"] == [3]
