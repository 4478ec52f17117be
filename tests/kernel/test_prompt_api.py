"""/prompt, /queue, /interrupt, /free, /object_info and /embeddings over real HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kernel import hookimpl
from kernel.events import PromptQueued, PromptsRemoved
from tests.nodepack import basic

SPEC = Path(__file__).resolve().parents[1] / "spec" / "openapi.yaml"
SINK = {"1": {"class_type": "TestSink", "inputs": {"value": 1}}}


class Recorder:
    """Collects the bus events of one server."""

    def __init__(self, server: Any) -> None:
        self.events: list[Any] = []
        server.kernel.bus.subscribe(self.events.append)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def server(comfy_server: Any) -> Any:
    return await comfy_server(plugins=[("testpack", basic)])


async def post_prompt(server: Any, prompt: Any = None, **body: Any) -> tuple[int, Any]:
    if prompt is not None:
        body["prompt"] = prompt
    return await server.json("POST", "/prompt", json=body)


# --- GET/POST /prompt ---------------------------------------------------------------------------


async def test_get_prompt(server: Any) -> None:
    status, body = await server.json("GET", "/prompt")
    assert (status, body) == (200, {"exec_info": {"queue_remaining": server.kernel.queue.remaining()}})
    status, body = await server.json("GET", "/api/prompt")
    assert status == 200 and "queue_remaining" in body["exec_info"]


async def test_post_prompt_accepts(server: Any) -> None:
    events = Recorder(server)
    status, body = await post_prompt(server, SINK, client_id="abc")
    assert status == 200
    assert set(body) == {"prompt_id", "number", "node_errors"}
    assert str(uuid.UUID(body["prompt_id"])) == body["prompt_id"]
    assert body["node_errors"] == {}
    assert isinstance(body["number"], int)
    # Published synchronously, before the HTTP answer left.
    (queued,) = events.of(PromptQueued)
    item = queued.item
    assert item.prompt_id == body["prompt_id"]
    assert item.prompt == SINK
    assert item.outputs_to_execute == ["1"]
    assert item.extra_data["client_id"] == "abc"
    assert (
        isinstance(item.extra_data["create_time"], int) and item.extra_data["create_time"] > 1_600_000_000_000
    )


async def test_client_prompt_id(server: Any) -> None:
    prompt_id = str(uuid.uuid4())
    status, body = await post_prompt(server, SINK, prompt_id=prompt_id)
    assert (status, body["prompt_id"]) == (200, prompt_id)
    status, body = await post_prompt(server, SINK, prompt_id=None)
    assert status == 200 and body["prompt_id"] != prompt_id


@pytest.mark.parametrize("bad", ["abc", str(uuid.uuid4()).upper(), str(uuid.uuid4()).replace("-", ""), 12])
async def test_invalid_prompt_id(server: Any, bad: Any) -> None:
    status, body = await post_prompt(server, SINK, prompt_id=bad)
    assert status == 400
    assert body["node_errors"] == {}
    error = body["error"]
    assert (error["type"], error["message"], error["extra_info"]) == (
        "invalid_prompt_id",
        "prompt_id must be a valid UUID",
        {},
    )
    assert isinstance(error["details"], str)


async def test_no_prompt(server: Any) -> None:
    status, body = await post_prompt(server, client_id="x")
    assert (status, body) == (
        400,
        {
            "error": {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            },
            "node_errors": {},
        },
    )


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
async def test_malformed_body_is_400(server: Any, raw: bytes) -> None:
    async with server.post("/prompt", data=raw, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        body = json.loads(await resp.text())
    assert body["error"]["type"] in ("invalid_prompt", "no_prompt")
    assert body["node_errors"] == {}


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": SINK, "number": "soon"},
        {"prompt": SINK, "extra_data": [1]},
        {"prompt": SINK, "partial_execution_targets": "1"},
    ],
)
async def test_malformed_fields_are_400(server: Any, body: dict[str, Any]) -> None:
    status, answer = await server.json("POST", "/prompt", json=body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_prompt"


async def test_number_and_front(server: Any) -> None:
    numbers = []
    for body in ({}, {}, {"front": True}, {"number": 5}, {"number": 2.5, "front": True}, {}):
        status, answer = await post_prompt(server, SINK, **body)
        assert status == 200
        numbers.append(answer["number"])
    # Counter 0, 1, then front → -2; explicit numbers bypass the counter (and front) and come back as floats.
    assert numbers == [0, 1, -2, 5.0, 2.5, 3]
    assert isinstance(numbers[3], float) and isinstance(numbers[0], int)


async def test_rejected_prompt_consumes_a_number(server: Any) -> None:
    _, first = await post_prompt(server, SINK)
    status, _ = await post_prompt(server, {"1": {"class_type": "TestSink", "inputs": {}}})
    assert status == 400
    _, third = await post_prompt(server, SINK)
    assert third["number"] == first["number"] + 2


async def test_extra_data(server: Any) -> None:
    events = Recorder(server)
    extra = {
        "extra_pnginfo": {"workflow": {"nodes": []}},
        "api_key_comfy_org": "secret",
        "auth_token_comfy_org": "tok",
    }
    async with server.post(
        "/prompt",
        json={"prompt": SINK, "client_id": "c1", "extra_data": extra},
        headers={"Comfy-Usage-Source": "script"},
    ) as resp:
        assert resp.status == 200
    item = events.of(PromptQueued)[0].item
    assert item.sensitive == {"api_key_comfy_org": "secret", "auth_token_comfy_org": "tok"}
    assert "api_key_comfy_org" not in item.extra_data and "auth_token_comfy_org" not in item.extra_data
    assert item.extra_data["comfy_usage_source"] == "script"
    assert item.extra_data["client_id"] == "c1"
    assert item.extra_data["extra_pnginfo"] == {"workflow": {"nodes": []}}
    assert "comfy_user" not in item.extra_data  # single-user server
    assert "secret" not in json.dumps(item.as_list())


async def test_usage_source_does_not_override(server: Any) -> None:
    events = Recorder(server)
    body = {"prompt": SINK, "extra_data": {"comfy_usage_source": "mine"}}
    async with server.post("/prompt", json=body, headers={"Comfy-Usage-Source": "header"}) as resp:
        assert resp.status == 200
    assert events.of(PromptQueued)[0].item.extra_data["comfy_usage_source"] == "mine"


async def test_multi_user_records_user(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[("testpack", basic)], multi_user=True)
    events = Recorder(server)
    async with server.post("/prompt", json={"prompt": SINK}, headers={"Comfy-User": "alice"}) as resp:
        assert resp.status == 200
    async with server.post("/prompt", json={"prompt": SINK}) as resp:
        assert resp.status == 200
    users = [e.item.extra_data["comfy_user"] for e in events.of(PromptQueued)]
    assert users == ["alice", "default"]


async def test_on_prompt_rewrites_before_validation(comfy_server: Any) -> None:
    class Rewriter:
        @hookimpl
        def on_prompt(self, body: dict[str, Any]) -> dict[str, Any]:
            # Fill the missing required input, as a node-replacement plugin would.
            body["prompt"]["1"]["inputs"].setdefault("value", 42)
            return body

    server = await comfy_server(plugins=[("testpack", basic), ("rewriter", Rewriter())])
    events = Recorder(server)
    status, _ = await post_prompt(server, {"1": {"class_type": "TestSink", "inputs": {}}})
    assert status == 200
    assert events.of(PromptQueued)[0].item.prompt["1"]["inputs"]["value"] == 42


# --- the queue ----------------------------------------------------------------------------------


class Gate:
    """A prompt that holds the queue until released, so the prompts after it stay pending."""

    def __init__(self, server: Any, tmp_path: Path) -> None:
        self.server = server
        self.path = tmp_path / "gate-open"

    async def __aenter__(self) -> str:
        prompt = {"g": {"class_type": "TestGate", "inputs": {"path": str(self.path)}}}
        status, body = await post_prompt(self.server, prompt, number=-1000)
        assert status == 200
        if self.server.kernel.executor is not None:  # wait until it runs; otherwise it just waits in line
            for _ in range(500):
                running, _ = self.server.kernel.queue.snapshot()
                if any(i.prompt_id == body["prompt_id"] for i in running):
                    break
                await asyncio.sleep(0.01)
        return body["prompt_id"]

    async def __aexit__(self, *exc: object) -> None:
        self.path.write_text("open")


def _queued_ids(queue: dict[str, Any], gate_id: str) -> list[Any]:
    items = [i for i in queue["queue_running"] + queue["queue_pending"] if i[1] != gate_id]
    return [i[1] for i in sorted(items, key=lambda i: (i[0], i[1]))]


async def test_queue_listing_and_order(server: Any, tmp_path: Path) -> None:
    async with Gate(server, tmp_path) as gate_id:
        ids = []
        for body in ({}, {}, {"front": True}, {"number": 0.5}):
            status, answer = await post_prompt(server, SINK, client_id="me", **body)
            assert status == 200
            ids.append(answer["prompt_id"])
        status, queue = await server.json("GET", "/queue")
        assert status == 200
        assert set(queue) == {"queue_running", "queue_pending"}
        for item in queue["queue_pending"]:
            assert len(item) == 5
            number, prompt_id, prompt, extra_data, outputs = item
            if prompt_id in ids:
                assert prompt == SINK and outputs == ["1"] and extra_data["client_id"] == "me"
        # front first, then the counter order, the explicit 0.5 between counter values 0 and 1.
        assert _queued_ids(queue, gate_id) == [ids[2], ids[0], ids[3], ids[1]]
        _, info = await server.json("GET", "/prompt")
        assert info["exec_info"]["queue_remaining"] == 5


async def test_queue_delete_and_clear(server: Any, tmp_path: Path) -> None:
    events = Recorder(server)
    async with Gate(server, tmp_path) as gate_id:
        ids = [(await post_prompt(server, SINK))[1]["prompt_id"] for _ in range(3)]
        async with server.post("/queue", json={"delete": [ids[1], "not-there"]}) as resp:
            assert resp.status == 200
            assert await resp.read() == b""
        _, queue = await server.json("GET", "/queue")
        assert _queued_ids(queue, gate_id) == [ids[0], ids[2]]
        assert [e.prompt_ids for e in events.of(PromptsRemoved)] == [[ids[1]]]

        async with server.post("/api/queue", json={"clear": True}) as resp:
            assert resp.status == 200
        _, queue = await server.json("GET", "/queue")
        assert _queued_ids(queue, gate_id) == []
        removed = events.of(PromptsRemoved)[-1].prompt_ids
        assert ids[0] in removed and ids[2] in removed and ids[1] not in removed
        # A running gate stays; a pending one was cleared with the rest.
        if server.kernel.executor is not None:
            assert [i[1] for i in queue["queue_running"]] == [gate_id]


@pytest.mark.parametrize("raw", [b"{bad", b'{"delete": "abc"}', b'{"delete": [1]}', b"[]"])
async def test_queue_bad_body(server: Any, raw: bytes) -> None:
    async with server.post("/queue", data=raw) as resp:
        assert resp.status == 400
        assert "error" in json.loads(await resp.text())


async def test_queue_empty_body_is_noop(server: Any) -> None:
    events = Recorder(server)
    async with server.post("/queue", json={}) as resp:
        assert resp.status == 200
    assert events.of(PromptsRemoved) == []


# --- /interrupt and /free -----------------------------------------------------------------------


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[str | None] = []

    def interrupt(self, prompt_id: str | None) -> bool:
        self.calls.append(prompt_id)
        return True


async def test_interrupt(server: Any) -> None:
    real = server.kernel.executor
    fake = server.kernel.executor = FakeExecutor()
    try:
        for kwargs in (
            {},
            {"json": {}},
            {"json": {"prompt_id": "p1"}},
            {"data": b"{broken"},
            {"json": {"prompt_id": 5}},
        ):
            async with server.post("/interrupt", **kwargs) as resp:
                assert resp.status == 200
                assert await resp.read() == b""
    finally:
        server.kernel.executor = real
    # No body, {} and a broken body interrupt globally; a non-string id names nothing running.
    assert fake.calls == [None, None, "p1", None]


async def test_interrupt_without_executor(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[])
    server.kernel.executor = None
    async with server.post("/interrupt", json={"prompt_id": "x"}) as resp:
        assert resp.status == 200


class FreeRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []

    @hookimpl
    def on_free(self, kernel: Any, unload_models: bool, free_memory: bool) -> None:
        assert kernel is not None
        self.calls.append((unload_models, free_memory))


async def test_hook_on_free(comfy_server: Any) -> None:
    recorder = FreeRecorder()
    server = await comfy_server(plugins=[("free_recorder", recorder)])
    for body in ({"unload_models": True}, {"free_memory": True, "unload_models": False}, {}):
        async with server.post("/free", json=body) as resp:
            assert resp.status == 200
            assert await resp.read() == b""
    async with server.post("/api/free") as resp:  # no body at all
        assert resp.status == 200
    async with server.post("/free", data=b"{oops") as resp:
        assert resp.status == 400
    assert recorder.calls == [(True, False), (False, True), (False, False), (False, False)]


# --- /embeddings --------------------------------------------------------------------------------


class Embeddings:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    @hookimpl
    def register_embeddings(self, kernel: Any) -> list[str]:
        return self.names


async def test_embeddings_empty_without_providers(server: Any) -> None:
    assert await server.json("GET", "/embeddings") == (200, [])


async def test_hook_register_embeddings(comfy_server: Any) -> None:
    server = await comfy_server(
        plugins=[("e1", Embeddings(["zeta", "alpha"])), ("e2", Embeddings(["beta", "alpha"]))]
    )
    assert await server.json("GET", "/embeddings") == (200, ["alpha", "beta", "zeta"])
    assert await server.json("GET", "/api/embeddings") == (200, ["alpha", "beta", "zeta"])


# --- /object_info -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_info_validator() -> jsonschema.protocols.Validator:
    spec = yaml.safe_load(SPEC.read_text())
    schema = {"$ref": "#/components/schemas/NodeInfo", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def node_info_fields() -> set[str]:
    spec = yaml.safe_load(SPEC.read_text())
    return set(spec["components"]["schemas"]["NodeInfo"]["properties"])


async def test_object_info_entries_match_the_spec(
    server: Any, node_info_validator: Any, node_info_fields: set[str]
) -> None:
    status, info = await server.json("GET", "/object_info")
    assert status == 200
    expected = (set(basic.V1_NODES) | set(basic.V3_NODES)) - {"TestBroken"}  # a broken node is omitted
    assert expected <= set(info)
    assert "TestBroken" not in info
    for name, entry in info.items():
        node_info_validator.validate(entry)
        assert set(entry) <= node_info_fields, (name, set(entry) - node_info_fields)
        for field in (
            "input",
            "input_order",
            "output",
            "output_is_list",
            "output_name",
            "name",
            "display_name",
        ):
            assert field in entry, (name, field)
        assert entry["name"] == name
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])


async def test_object_info_v1_fields(server: Any) -> None:
    status, info = await server.json("GET", "/object_info/TestMeta")
    assert status == 200
    meta = info["TestMeta"]
    assert meta["input"]["required"]["value"] == ["INT", {"default": 1, "tooltip": "a value"}]
    assert meta["input"]["hidden"] == {
        "unique_id": "UNIQUE_ID",
        "prompt": "PROMPT",
        "extra_pnginfo": "EXTRA_PNGINFO",
        "dynprompt": "DYNPROMPT",
    }
    assert meta["input_order"] == {
        "required": ["value", "maybe", "raw"],
        "optional": ["label"],
        "hidden": ["unique_id", "prompt", "extra_pnginfo", "dynprompt"],
    }
    assert meta["output"] == ["INT", "STRING"]
    assert meta["output_name"] == ["number", "label"]
    assert meta["output_is_list"] == [True, False]
    assert meta["output_tooltips"] == ["the number", "the label"]
    assert meta["is_input_list"] is True
    assert meta["display_name"] == "Test Meta"
    assert meta["description"] == "A node with every piece of metadata"
    assert meta["python_module"] == "testpack"
    assert meta["category"] == "testing/meta"
    assert meta["output_node"] is False
    assert (meta["deprecated"], meta["experimental"], meta["dev_only"], meta["api_node"]) == (
        True,
        True,
        True,
        False,
    )
    assert meta["search_aliases"] == ["metadata", "everything"]

    _, info = await server.json("GET", "/object_info/TestSink")
    sink = info["TestSink"]
    assert sink["output_node"] is True and sink["output"] == [] and sink["display_name"] == "TestSink"
    assert sink["description"] == "" and sink["search_aliases"] == []
    for absent in ("deprecated", "experimental", "dev_only", "api_node", "output_tooltips"):
        assert absent not in sink

    _, info = await server.json("GET", "/object_info/TestCombo")
    assert info["TestCombo"]["input"]["required"]["choice"] == [["a", "b", "c"], {"default": "a"}]


async def test_object_info_v3_fields(server: Any) -> None:
    status, info = await server.json("GET", "/api/object_info/TestV3Scale")
    assert status == 200
    scale = info["TestV3Scale"]
    assert scale["input"] == {
        "required": {
            "value": ["FLOAT", {"tooltip": "the number", "default": 1.0}],
            "factor": ["FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0}],
            "mode": ["COMBO", {"options": ["mul", "add"], "default": "mul"}],
        },
        "optional": {"offset": ["INT", {"lazy": True}]},
        "hidden": {"unique_id": "UNIQUE_ID"},
    }
    assert scale["input_order"] == {
        "required": ["value", "factor", "mode"],
        "optional": ["offset"],
        "hidden": ["unique_id"],
    }
    assert scale["output"] == ["FLOAT"] and scale["output_name"] == ["scaled"]
    assert scale["output_tooltips"] == ["value × factor"]
    assert scale["display_name"] == "Scale (V3)"
    assert scale["category"] == "testing/v3"
    assert scale["description"] == "Multiplies a number"
    assert scale["python_module"] == "testpack"
    assert scale["search_aliases"] == ["multiply"]
    assert scale["output_node"] is False

    _, info = await server.json("GET", "/object_info/TestV3List")
    assert info["TestV3List"]["output_is_list"] == [True, False]
    assert info["TestV3List"]["experimental"] is True
    _, info = await server.json("GET", "/object_info/TestV3Sink")
    assert info["TestV3Sink"]["output_node"] is True and info["TestV3Sink"]["display_name"] == "TestV3Sink"


async def test_object_info_unknown_class_is_empty(server: Any) -> None:
    assert await server.json("GET", "/object_info/NoSuchNode") == (200, {})
    assert await server.json("GET", "/api/object_info/TestBroken") == (200, {})


async def test_object_info_without_nodes(comfy_server: Any) -> None:
    server = await comfy_server(plugins=[])
    status, info = await server.json("GET", "/object_info")
    assert status == 200 and isinstance(info, dict)


@pytest.mark.parametrize("number", ["nan", "inf", "-Infinity"])
async def test_non_finite_number_is_400(server: Any, number: str) -> None:
    # A NaN number used to be queued (answered as "number": null) and broke the heap order.
    status, answer = await post_prompt(server, SINK, number=number)
    assert status == 400
    assert answer["error"]["type"] == "invalid_prompt"
    assert server.kernel.queue.remaining() == 0


async def test_duplicate_live_prompt_id_is_400(server: Any, tmp_path: Path) -> None:
    # A second live item with the same id and number used to be a 500 (the heap compared the
    # items) after its PromptQueued had already gone out.
    pid = str(uuid.uuid4())
    events = Recorder(server)
    async with Gate(server, tmp_path):
        statuses = []
        for _ in range(3):
            status, answer = await post_prompt(server, SINK, prompt_id=pid, number=1)
            statuses.append(status)
        assert statuses == [200, 400, 400]
        assert answer["error"]["type"] == "invalid_prompt_id"
        assert [e.item.prompt_id for e in events.of(PromptQueued)].count(pid) == 1
        _, queue = await server.json("GET", "/queue")
        assert [i[1] for i in queue["queue_pending"]].count(pid) == 1
