"""Every node the server publishes, driven by its own ``/object_info`` entry through the real server.

No hand list of classes: each check walks what ``GET /object_info`` announces, so a node added
tomorrow is covered too. For every class:

* a prompt leaving out one required input at a time is refused (400) with the reference's
  ``required_input_missing`` for that input (execution-semantics §2);
* a number under its minimum or over its maximum, a combo choice that is not offered and a text
  where a number belongs are refused with ``value_smaller_than_min`` / ``value_bigger_than_max`` /
  ``value_not_in_list`` / ``invalid_input_type`` for that input;
* a prompt made only of nodes that are not outputs is refused as having no outputs, whatever
  state their inputs are in (validation starts from the outputs);
* a node whose inputs are all widgets runs with its defaults, and so does every node whose links
  those nodes can feed, on defaults and with every number at its minimum: the server never
  answers 500 nor hangs, an execution error names its cause, and the server still runs a prompt
  afterwards. Loaders look at an empty models folder, so they are
  refused at validation (the file is not in the list) or fail with a message.

A refusal must never be a crash in disguise: no ``exception_during_validation`` and no traceback
text in a 4xx body. One server serves the whole module; each class's cases share one prompt.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kernel.nodes import node_specs
from kernel.server import start_server
from kernel.testing import ServerClient, build_kernel
from tests.kernel.exec_helpers import collect, connect

pytestmark = pytest.mark.asyncio(loop_scope="module")

WIDGETS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
AUTOGROW = "COMFY_AUTOGROW_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
# A choice no combo offers.
NOT_A_CHOICE = "\u00a7 not one of the choices \u00a7"
CRASH_TYPES = frozenset({"exception_during_validation", "exception_during_inner_validation"})


# --- reading /object_info -------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One input as a prompt spells it (autogrow slots and dynamic-combo widgets by dotted name)."""

    name: str
    kind: Any  # a type name, or the list of a classic combo's choices
    options: dict[str, Any]
    required: bool

    @property
    def choices(self) -> list[Any] | None:
        if isinstance(self.kind, list):
            return self.kind
        if self.kind == "COMBO":
            return list(self.options.get("options") or [])
        return None

    @property
    def is_widget(self) -> bool:
        """Set by a literal in the prompt (a socketless input is a widget of a custom type)."""
        if self.choices is not None or self.options.get("socketless"):
            return True
        return self.kind in WIDGETS and not self.options.get("forceInput")


def _parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    return spec[0], (dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {})


def _inputs(groups: dict[str, Any], prefix: str = "") -> Iterator[Input]:
    """The inputs of an ``{"required": ..., "optional": ...}`` declaration, dynamic ones unfolded
    the reference's way: an autogrow's first ``min`` slots are required, a dynamic combo takes its
    first option and brings that option's inputs under ``<combo>.<name>``."""
    for section in ("required", "optional"):
        for name, spec in (groups.get(section) or {}).items():
            kind, options = _parts(spec)
            full = f"{prefix}{name}"
            required = section == "required"
            if kind == AUTOGROW:
                template = options["template"]
                (slot_spec,) = [s for g in template["input"].values() for s in g.values()]
                slot_kind, slot_options = _parts(slot_spec)
                names = template.get("names") or [
                    f"{template['prefix']}{i}" for i in range(int(template.get("max") or 1))
                ]
                for slot in names[: int(template.get("min") or 0)]:
                    yield Input(f"{full}.{slot}", slot_kind, slot_options, required)
            elif kind == DYNAMIC_COMBO:
                first = options["options"][0]
                choices = [o["key"] for o in options["options"]]
                yield Input(full, "COMBO", {"options": choices, "default": first["key"]}, required)
                yield from _inputs(first.get("inputs") or {}, f"{full}.")
            else:
                yield Input(full, kind, options, required)


def _literal(item: Input) -> Any:
    """A valid literal for a widget: its default, else its first choice or lowest value."""
    if "default" in item.options:
        default = item.options["default"]
        # A bare list would be a link: list values travel wrapped.
        return {"__value__": default} if isinstance(default, list) else default
    choices = item.choices
    if choices is not None:
        return choices[0] if choices else "none.safetensors"
    return {"INT": max(0, item.options.get("min", 0)), "FLOAT": 0.0, "BOOLEAN": False}.get(item.kind, "")


@dataclass
class Catalogue:
    """``/object_info`` plus, per type, a node that produces it (for linking inputs), chosen
    among ``producing`` (all classes when None), widget-only and simple ones first."""

    info: dict[str, Any]
    producing: Collection[str] | None = None
    producers: dict[str, tuple[str, int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        classes = self.info if self.producing is None else self.producing
        ranked = sorted(classes, key=lambda c: (not self.all_widgets(c), len(self.required(c)), c))
        for cls in ranked:
            for index, kind in enumerate(self.info[cls]["output"]):
                if isinstance(kind, str):
                    self.producers.setdefault(kind, (cls, index))

    def inputs(self, cls: str) -> list[Input]:
        return list(_inputs(self.info[cls]["input"]))

    def required(self, cls: str) -> list[Input]:
        return [i for i in self.inputs(cls) if i.required]

    def all_widgets(self, cls: str) -> bool:
        return all(i.is_widget for i in self.required(cls))

    def producer_of(self, kind: Any, options: dict[str, Any]) -> tuple[str, int]:
        """A node giving ``kind`` (the first of a union that has one); KeyError when none does.
        Any producer serves an input that takes anything."""
        if kind == MATCH_TYPE:
            kind = options.get("template", {}).get("allowed_types", "*")
        names = [name.strip() for name in str(kind).split(",")]
        for name in names:
            if name in self.producers:
                return self.producers[name]
        if "*" in names:
            return self.producers["INT"]
        raise KeyError(kind)


class PromptBuilder:
    """A prompt of several independent cases, each a node under test and, unless the node is an
    output itself, a PreviewAny showing its first output (a prompt needs an output to be valid)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.prompt: dict[str, Any] = {}
        self._sources: dict[tuple[str, int], str] = {}

    def _source(self, kind: Any, options: dict[str, Any]) -> list[Any]:
        cls, index = self.catalogue.producer_of(kind, options)
        if (cls, index) not in self._sources:
            node_id = f"src{len(self._sources)}"
            self._sources[(cls, index)] = node_id
            self.prompt[node_id] = {"class_type": cls, "inputs": self.valid_inputs(cls, links=False)}
        return [self._sources[(cls, index)], index]

    def valid_inputs(self, cls: str, links: bool = True, strict: bool = False) -> dict[str, Any]:
        """Every required input of ``cls``: widgets at their defaults, links from producers.
        A type no node produces raises KeyError when ``strict``, else it is given its default
        as a literal if it has one, or left out."""
        values: dict[str, Any] = {}
        for item in self.catalogue.required(cls):
            if item.is_widget:
                values[item.name] = _literal(item)
            elif links:
                try:
                    values[item.name] = self._source(item.kind, item.options)
                except KeyError:
                    if strict:
                        raise
                    if "default" in item.options:
                        values[item.name] = _literal(item)
        return values

    def add(self, node_id: str, cls: str, inputs: dict[str, Any]) -> None:
        self.prompt[node_id] = {"class_type": cls, "inputs": inputs}
        if not self.catalogue.info[cls]["output_node"]:
            self.prompt[f"{node_id}_show"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Served:
    client: ServerClient
    catalogue: Catalogue


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    base: Path = tmp_path_factory.mktemp("every_node")
    kernel = build_kernel(base, ["core_nodes", "models"], listen=["127.0.0.1"])
    client = ServerClient(await start_server(kernel, port=0), aiohttp.ClientSession())
    try:
        status, info = await client.json("GET", "/object_info")
        assert status == 200
        yield Served(client, Catalogue(info))
    finally:
        await client.stop()


async def post_prompt(client: ServerClient, prompt: dict[str, Any], **extra: Any) -> tuple[int, Any, str]:
    async with client.post("/prompt", json={"prompt": prompt, **extra}) as resp:
        text = await resp.text()
        body = await resp.json(content_type=None) if text else None
        return resp.status, body, text


def _refusal_problems(cls: str, status: int, body: Any, text: str) -> list[str]:
    """What is wrong with a refusal beyond its reasons: not a 400, not the shape, a crash inside."""
    if status != 400:
        return [f"{cls}: HTTP {status} instead of 400: {text[:300]}"]
    problems = []
    if "Traceback (most recent call last)" in text:
        problems.append(f"{cls}: traceback text in the 400 body")
    if body["error"]["type"] != "prompt_outputs_failed_validation":
        problems.append(f"{cls}: error type {body['error']['type']}: {body['error']['message']}")
    for node_id, entry in (body.get("node_errors") or {}).items():
        crashes = [e for e in entry["errors"] if e["type"] in CRASH_TYPES]
        if crashes:
            problems.append(f"{cls}: node {node_id} ({entry['class_type']}) {crashes[0]['details']}")
    return problems


def _has_reason(body: Any, node_id: str, type_: str, input_name: str) -> bool:
    entry = (body.get("node_errors") or {}).get(node_id) or {"errors": []}
    return any(
        e["type"] == type_ and e["extra_info"].get("input_name") == input_name for e in entry["errors"]
    )


# --- (a) required inputs --------------------------------------------------------------------------


async def test_a_prompt_without_an_output_node_is_refused_before_any_node_is_validated(
    served: Served,
) -> None:
    inner = sorted(c for c, entry in served.catalogue.info.items() if not entry["output_node"])
    prompt = {f"n{i}": {"class_type": cls, "inputs": {}} for i, cls in enumerate(inner)}
    no_outputs = {
        "error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
        "node_errors": {},
    }
    status, body, _ = await post_prompt(served.client, prompt)
    assert (status, body) == (400, no_outputs)
    # Likewise when the targets of a partial run name no output node.
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["n0", 0]}}
    status, body, _ = await post_prompt(served.client, prompt, partial_execution_targets=["n0", "n1"])
    assert (status, body) == (400, no_outputs)


async def test_every_required_input_left_out_is_reported_by_name(served: Served) -> None:
    catalogue, problems = served.catalogue, []
    for cls in sorted(catalogue.info):
        build = PromptBuilder(catalogue)
        cases: dict[str, str] = {}
        for number, item in enumerate(catalogue.required(cls)):
            inputs = build.valid_inputs(cls)
            inputs.pop(item.name, None)
            build.add(f"case{number}", cls, inputs)
            cases[f"case{number}"] = item.name
        if not cases:
            continue
        status, body, text = await post_prompt(served.client, build.prompt)
        found = _refusal_problems(cls, status, body, text)
        problems += found
        if found and status != 400:
            continue
        for node_id, name in cases.items():
            if not _has_reason(body, node_id, "required_input_missing", name):
                problems.append(f"{cls}: leaving out {name!r} is not reported as required_input_missing")
    assert not problems, "\n".join(problems)


# --- (b) values out of range, not offered, of the wrong type ---------------------------------------


def _bad_values(item: Input) -> Iterator[tuple[Any, str]]:
    """(value, the reference's reason type) for each way this widget's value can be wrong."""
    choices = item.choices
    if choices is not None:
        yield NOT_A_CHOICE, "value_not_in_list"
        return
    if item.kind not in ("INT", "FLOAT"):
        return
    for bound, step, reason in (("min", -1, "value_smaller_than_min"), ("max", 1, "value_bigger_than_max")):
        if bound in item.options:
            limit = item.options[bound]
            value = limit + step if item.kind == "INT" else limit + step * max(1.0, abs(limit))
            if math.isfinite(value):
                yield value, reason
    yield "not a number", "invalid_input_type"


async def test_every_bad_widget_value_is_refused_with_the_reference_reason(served: Served) -> None:
    catalogue, problems = served.catalogue, []
    specs = node_specs(served.client.kernel)
    for cls in sorted(catalogue.info):
        spec = specs.get(cls)
        assert spec is not None, cls
        validator_args, validator_kwargs = spec.validate_signature
        build = PromptBuilder(catalogue)
        cases: dict[str, tuple[str, Any, str]] = {}
        for item in catalogue.inputs(cls):
            # A node's own validator owns the range and choices of the inputs it names.
            own = validator_kwargs or item.name in validator_args
            for value, reason in _bad_values(item):
                if own and reason != "invalid_input_type":
                    continue
                inputs = build.valid_inputs(cls)
                inputs[item.name] = value
                node_id = f"case{len(cases)}"
                build.add(node_id, cls, inputs)
                cases[node_id] = (item.name, value, reason)
        if not cases:
            continue
        status, body, text = await post_prompt(served.client, build.prompt)
        found = _refusal_problems(cls, status, body, text)
        problems += found
        if found and status != 400:
            continue
        for node_id, (name, value, reason) in cases.items():
            if not _has_reason(body, node_id, reason, name):
                problems.append(f"{cls}: {name}={value!r} is not refused as {reason}")
    assert not problems, "\n".join(problems)


# --- (c) running nodes on their defaults -----------------------------------------------------------


def _file_refusal_problems(cls: str, body: Any) -> list[str]:
    """Defaults may be refused only for a file that is not installed: the node's file choice is
    not in its (empty) list, or the node's own check says the file is not there."""
    problems = []
    for entry in body["node_errors"].values():
        for reason in entry["errors"]:
            if reason["type"] not in ("value_not_in_list", "custom_validation_failed"):
                problems.append(f"{cls}: its defaults are refused: {reason['type']} {reason['details']}")
            elif not reason["details"]:
                problems.append(f"{cls}: refused without saying which input: {reason}")
    return problems


# Each case runs in well under a second; one taking this long is stuck.
CASE_SECONDS = 30


async def _run(client: ServerClient, prompt: dict[str, Any]) -> tuple[int, Any, str, list[dict[str, Any]]]:
    """POST the prompt; when accepted, the JSON frames until it ends (TimeoutError after
    ``CASE_SECONDS``)."""
    client_id, ws = await connect(client, uuid.uuid4().hex)
    try:
        status, body, text = await post_prompt(client, prompt, client_id=client_id)
        if status != 200:
            return status, body, text, []
        frames = await collect(ws, body["prompt_id"], timeout=CASE_SECONDS)
        return status, body, text, [f for f in frames if isinstance(f, dict)]
    finally:
        await ws.close()


async def _run_one(client: ServerClient, build: PromptBuilder, cls: str, problems: list[str]) -> bool:
    """Run the one case of ``build``; note what is wrong with how it went. True when it ran."""
    try:
        status, body, text, frames = await asyncio.wait_for(_run(client, build.prompt), CASE_SECONDS + 5)
    except TimeoutError:
        # The worker is still busy with it: every later case would queue behind and time out.
        pytest.fail("\n".join([*problems, f"{cls}: no end within {CASE_SECONDS} s"]))
    if status == 400:
        problems.extend(_refusal_problems(cls, status, body, text) + _file_refusal_problems(cls, body))
        return False
    if status != 200:
        problems.append(f"{cls}: HTTP {status}: {text[:300]}")
        return False
    ends = [f["type"] for f in frames if f["type"] in ("execution_success", "execution_error")]
    if len(ends) != 1:
        problems.append(f"{cls}: the prompt ended with {ends} instead of one success or error")
    for error in [f["data"] for f in frames if f["type"] == "execution_error"]:
        message = str(error.get("exception_message") or "").strip()
        # A failure on defaults is allowed (a format template naming no connected value, a
        # VAE this server lacks) as long as it says what is wrong, in words.
        if not message or "Traceback (most recent call last)" in message or not error.get("exception_type"):
            problems.append(f"{cls}: execution error without a clear message: {error!r}"[:400])
    return ends == ["execution_success"]


def _at_minimum(catalogue: Catalogue, cls: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with every number widget at its declared minimum (sizes of 0, no steps,
    the largest shrink of a mask ...): the corner where loops and divisions go wrong."""
    for item in catalogue.required(cls):
        low = item.options.get("min")
        if item.kind in ("INT", "FLOAT") and item.is_widget and low is not None and abs(low) < 1e12:
            inputs[item.name] = low
    return inputs


async def test_every_node_runs_on_its_defaults_or_fails_clearly(served: Served) -> None:
    """Widget-only nodes first; then every node whose linked inputs one of those that ran can
    feed (an EmptyImage for an IMAGE, a SolidMask for a MASK ...); then all of them again with
    their numbers at the minimum. Nodes needing a model, a CLIP or a conditioning are left to
    the families' own tests: the models folder is empty."""
    catalogue, problems = served.catalogue, []
    runnable = [c for c in catalogue.info if catalogue.info[c]["output_node"] or catalogue.info[c]["output"]]
    ran: list[str] = []
    for cls in sorted(c for c in runnable if catalogue.all_widgets(c)):
        build = PromptBuilder(catalogue)
        build.add("node", cls, build.valid_inputs(cls))
        if await _run_one(served.client, build, cls, problems):
            ran.append(cls)

    fed = Catalogue(catalogue.info, producing=ran)
    assert {"IMAGE", "MASK", "LATENT", "SIGMAS"} <= set(fed.producers), fed.producers
    for at_minimum in (False, True):
        for cls in sorted(runnable):
            if catalogue.all_widgets(cls) and not at_minimum:
                continue  # run above
            build = PromptBuilder(fed)
            try:
                inputs = build.valid_inputs(cls, strict=True)
            except KeyError:
                continue  # a type none of the nodes that ran gives
            build.add("node", cls, _at_minimum(fed, cls, inputs) if at_minimum else inputs)
            await _run_one(served.client, build, f"{cls}{' (minimums)' if at_minimum else ''}", problems)

    # The server survived all of it: a plain prompt still runs.
    build = PromptBuilder(catalogue)
    build.add("alive", "PrimitiveInt", {"value": 7})
    status, body, text, frames = await _run(served.client, build.prompt)
    assert status == 200, text
    assert [f for f in frames if f["type"] == "execution_success"], frames
    assert not problems, "\n".join(problems)
