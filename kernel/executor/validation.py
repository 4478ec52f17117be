"""Prompt validation with the reference's rules, error types and JSON shapes.

Only nodes reachable backwards from the selected output nodes are validated (any unknown
``class_type`` anywhere still rejects the prompt). Literal values are coerced to their declared
type and written back into the prompt, so the executor sees ``5`` where a client sent ``5.0``.

The walk is iterative (an explicit stack instead of recursion) so a 2,000-node chain cannot
overflow Python's stack; it keeps the reference's recursive semantics, including which node an
exception is charged to.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from kernel.nodes import ExecutionBlocker, NodeSpec, node_specs
from kernel.nodes.dynamic import DYNAMIC_COMBO, dynamic_combo_keys, expand_dynamic_combos, has_dynamic_combo
from kernel.stash import StashKey

if TYPE_CHECKING:
    from kernel.app import Kernel

log = logging.getLogger("comfykernel.validation")

# V3's "match type" marker: the frontend resolves it, so validation lets it through.
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
COMBO_LIST_LIMIT = 20

Error = dict[str, Any]


class ValidationResult(NamedTuple):
    """``ok`` False means 400 with ``error``; otherwise run ``good_outputs``. ``node_errors`` either way."""

    ok: bool
    error: Error | None
    good_outputs: list[str]
    node_errors: dict[str, Any]


def make_error(
    type_: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None
) -> Error:
    """An error object of the reference's shape, made of plain JSON values only (see :func:`plain`)."""
    return {"type": type_, "message": message, "details": details, "extra_info": plain(extra_info or {})}


def plain(value: Any) -> Any:
    """``value`` with only JSON types left, so an error body can always be encoded.

    Error details quote node type declarations, and packs declare types as ``str`` subclasses
    (``class AnyType(str)`` overriding ``__ne__``) or put arbitrary objects in input options.
    Such a ``str`` becomes its plain text (``"*"``), tuples become lists, and any other
    non-JSON leaf becomes its ``str()``: a strange declaration must never turn a 400 into a 500.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {plain(k) if isinstance(k, str) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


# --- helpers ------------------------------------------------------------------------------------


_COERCE: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def coerce_literal(input_type: Any, value: Any) -> Any:
    """Convert a literal to its declared primitive type (``INT`` 5.0 → 5); raises on failure."""
    convert = _COERCE.get(input_type) if isinstance(input_type, str) else None
    return convert(value) if convert is not None else value


def is_combo(input_type: Any) -> bool:
    return isinstance(input_type, list | tuple) or input_type == "COMBO"


def validate_node_input(received_type: Any, input_type: Any, strict: bool = False) -> bool:
    """May an output of ``received_type`` feed an input of ``input_type``?"""
    # ``not a != b`` on purpose: str subclasses overriding ``__ne__`` widen matching this way.
    if not received_type != input_type:
        return True
    if "*" in (received_type, input_type) or MATCH_TYPE in (received_type, input_type):
        return True
    if isinstance(received_type, list) and input_type == "COMBO":
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    expected = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in expected:
        return True
    if strict:
        return received.issubset(expected)
    return bool(received & expected)


async def call_mapped(fn: Callable[..., Any], inputs: dict[str, list[Any]], input_is_list: bool) -> list[Any]:
    """Call ``fn`` the way the executor maps a node over input lists; await coroutine results.

    Short lists are padded with their last element; no inputs at all means one call.
    """
    if input_is_list:
        calls = [inputs]
    else:
        longest = max((len(v) for v in inputs.values()), default=0)
        if longest == 0:
            calls = [{}]
        else:
            calls = [{k: v[i if len(v) > i else -1] for k, v in inputs.items()} for i in range(longest)]
    results = []
    for kwargs in calls:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        results.append(result)
    return results


def _full_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def _node_title(node: dict[str, Any], default: Any) -> Any:
    meta = node.get("_meta")
    if isinstance(meta, dict):
        return meta.get("title", default)
    return default


def _declared_names(types: dict[str, Any]) -> list[str]:
    """The required and optional input names of a declaration, each once."""
    required = types.get("required") or {}
    return [*required, *(n for n in (types.get("optional") or {}) if n not in required)]


def _infos(spec: NodeSpec, types: dict[str, Any], names: list[str]) -> list[Any]:
    return [spec.input_info(name, types) for name in names]


# --- the per-node walk ----------------------------------------------------------------------------


@dataclass
class _Frame:
    node_id: str
    spec: NodeSpec
    inputs: dict[str, Any]
    types: dict[str, Any]
    names: list[str]
    infos: list[Any]  # spec.input_info of each of names
    validator_args: list[str]
    validator_kwargs: bool
    pos: int = 0
    errors: list[Error] = field(default_factory=list)
    valid: bool = True
    received_types: dict[str, Any] = field(default_factory=dict)
    # The link input being followed into a child: (input_name, input_config, link).
    pending: tuple[str, Any, Any] | None = None


class _Walker:
    def __init__(self, kernel: Kernel, prompt_id: str, prompt: dict[str, Any]) -> None:
        self.specs = node_specs(kernel)
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.validated: dict[str, tuple[bool, list[Error], str]] = {}
        self.edges: dict[str, list[str]] = {}
        self._cycle_errors: dict[str, list[Error]] = {}
        # Input declarations per class, asked once per prompt rather than once per node (a
        # 50-node chain of one class called INPUT_TYPES 50 times for every POST /prompt).
        # Each with its names' (type, category, options), looked up once per class too.
        self._declared: dict[str, tuple[dict[str, Any], list[str], list[Any]]] = {}
        self._dynamic: set[str] = set()  # classes with a dynamic combo, see _frame

    def _declaration(
        self, class_type: str, spec: NodeSpec
    ) -> tuple[dict[str, Any], list[str], list[Any]]:
        found = self._declared.get(class_type)
        if found is None:
            types = spec.execution_input_types()
            names = _declared_names(types)
            found = self._declared[class_type] = (types, names, _infos(spec, types, names))
            if has_dynamic_combo(types):
                self._dynamic.add(class_type)
        return found

    def _frame(self, node_id: str) -> _Frame:
        node = self.prompt[node_id]
        spec = self.specs.get(node["class_type"])
        if spec is None:  # every class was checked up front; only a lookup race gets here
            raise KeyError(node["class_type"])
        inputs = node.setdefault("inputs", {})
        if not isinstance(inputs, dict):
            raise TypeError(f"inputs of node {node_id} must be an object")
        types, names, infos = self._declaration(node["class_type"], spec)
        if node["class_type"] in self._dynamic:
            # The inputs a dynamic combo's choice brings exist for this node only.
            types = expand_dynamic_combos(types, inputs)
            names = _declared_names(types)
            infos = _infos(spec, types, names)
        args, kwargs = spec.validate_signature
        return _Frame(node_id, spec, inputs, types, names, infos, args, kwargs)

    async def validate(self, root: str) -> tuple[bool, list[Error]]:
        """Validate ``root`` and its ancestors; returns the root's (ok, own errors)."""
        if root in self.validated:
            ok, errors, _ = self.validated[root]
            return ok, errors
        stack: list[_Frame] = []
        visiting: dict[str, int] = {}
        try:
            stack.append(self._frame(root))
        except Exception as exc:
            return self._root_failed(root, exc)
        visiting[root] = 0
        while stack:
            frame = stack[-1]
            try:
                child = self._step(frame, stack, visiting)
                if child is None:
                    await self._finish(frame)
            except Exception as exc:
                stack.pop()
                visiting.pop(frame.node_id, None)
                self._cycle_errors.pop(frame.node_id, None)
                if not stack:
                    return self._root_failed(root, exc)
                self._inner_failed(stack[-1], frame.node_id, exc)
                continue
            if child is None:
                stack.pop()
                visiting.pop(frame.node_id, None)
                if stack:
                    parent = stack[-1]
                    parent.pending = None
                    if not self.validated[frame.node_id][0]:
                        parent.valid = False
                continue
            try:
                child_frame = self._frame(child)
            except Exception as exc:
                self._inner_failed(frame, child, exc)
                continue
            visiting[child] = len(stack)
            stack.append(child_frame)
        ok, errors, _ = self.validated[root]
        return ok, errors

    def _root_failed(self, root: str, exc: Exception) -> tuple[bool, list[Error]]:
        reasons = [
            make_error(
                "exception_during_validation",
                "Exception when validating node",
                str(exc),
                {"exception_type": _full_type_name(exc), "traceback": traceback.format_tb(exc.__traceback__)},
            )
        ]
        self.validated[root] = (False, reasons, root)
        return False, reasons

    def _inner_failed(self, parent: _Frame, child: str, exc: Exception) -> None:
        input_name, input_config, link = parent.pending or (None, None, None)
        parent.pending = None
        parent.valid = False
        self.validated[child] = (
            False,
            [
                make_error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(exc),
                    {
                        "input_name": input_name,
                        "input_config": input_config,
                        "exception_message": str(exc),
                        "exception_type": _full_type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                        "linked_node": link,
                    },
                )
            ],
            child,
        )

    def _step(self, f: _Frame, stack: list[_Frame], visiting: dict[str, int]) -> str | None:
        """Check inputs from ``f.pos`` on; return a child node id to descend into, or None when done."""
        while f.pos < len(f.names):
            name = f.names[f.pos]
            info = f.infos[f.pos]
            f.pos += 1
            assert info is not None
            input_type, category, options = info
            config = [input_type, options]
            if name not in f.inputs:
                if category == "required":
                    f.errors.append(
                        make_error(
                            "required_input_missing",
                            "Required input is missing",
                            name.split(".")[-1],
                            {"input_name": name},
                        )
                    )
                continue
            value = f.inputs[name]
            if isinstance(value, list):
                child = self._check_link(f, name, value, input_type, config, stack, visiting)
                if child is not None:
                    return child
            else:
                self._check_literal(f, name, value, input_type, options, config)
        return None

    def _check_link(
        self,
        f: _Frame,
        name: str,
        link: list[Any],
        input_type: Any,
        config: Any,
        stack: list[_Frame],
        visiting: dict[str, int],
    ) -> str | None:
        if len(link) != 2:
            f.errors.append(
                make_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name,
                    {"input_name": name, "input_config": config, "received_value": link},
                )
            )
            return None
        source = link[0]
        source_spec = self.specs.get(self.prompt[source]["class_type"])
        if source_spec is None:
            raise KeyError(self.prompt[source]["class_type"])
        received_type = source_spec.return_type_at(link[1])
        f.received_types[name] = received_type
        if "input_types" not in f.validator_args and not validate_node_input(received_type, input_type):
            f.errors.append(
                make_error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                    {
                        "input_name": name,
                        "input_config": config,
                        "received_type": received_type,
                        "linked_node": link,
                    },
                )
            )
            return None
        self.edges.setdefault(f.node_id, []).append(source)
        if source in self.validated:
            if not self.validated[source][0]:
                f.valid = False
            return None
        if source in visiting:
            self._report_cycle([fr.node_id for fr in stack[visiting[source] :]])
            f.valid = False
            return None
        f.pending = (name, config, link)
        return source

    def _report_cycle(self, cycle: list[str]) -> None:
        def label(node_id: str) -> str:
            return f"{node_id} ({self.prompt[node_id].get('class_type')})"

        details = " -> ".join(label(n) for n in [*cycle, cycle[0]])
        for node_id in cycle:
            self._cycle_errors.setdefault(node_id, []).append(
                make_error(
                    "dependency_cycle",
                    "Dependency cycle detected",
                    details,
                    {"node_id": node_id, "cycle_nodes": list(cycle)},
                )
            )

    def _check_literal(
        self, f: _Frame, name: str, value: Any, input_type: Any, options: dict[str, Any], config: Any
    ) -> None:
        try:
            if isinstance(value, dict) and "__value__" in value:
                # How clients send a literal list (a bare list would be a link).
                value = value["__value__"]
                f.inputs[name] = value
            converted = coerce_literal(input_type, value)
            if converted is not value:
                f.inputs[name] = value = converted
        except Exception as exc:
            f.errors.append(
                make_error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    {
                        "input_name": name,
                        "input_config": config,
                        "received_value": value,
                        "exception_message": str(exc),
                    },
                )
            )
            return
        if name in f.validator_args or f.validator_kwargs:
            return  # the node's own validator owns this input's range and choices
        if "min" in options and value < options["min"]:
            f.errors.append(
                make_error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {options['min']}",
                    name,
                    {"input_name": name, "input_config": config, "received_value": value},
                )
            )
            return
        if "max" in options and value > options["max"]:
            f.errors.append(
                make_error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {options['max']}",
                    name,
                    {"input_name": name, "input_config": config, "received_value": value},
                )
            )
            return
        if is_combo(input_type) or input_type == DYNAMIC_COMBO:
            if input_type == DYNAMIC_COMBO:
                choices = dynamic_combo_keys(options)
            else:
                choices = options.get("options", []) if input_type == "COMBO" else input_type
            if options.get("multiselect", False) and isinstance(value, list):
                bad = [v for v in value if v not in choices]
            else:
                bad = [value] if value not in choices else []
            if bad:
                too_long = len(choices) > COMBO_LIST_LIMIT
                listing = f"(list of length {len(choices)})" if too_long else str(choices)
                f.errors.append(
                    make_error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {listing}",
                        {
                            "input_name": name,
                            "input_config": None if too_long else config,
                            "received_value": value,
                        },
                    )
                )

    async def _finish(self, f: _Frame) -> None:
        if f.validator_args or f.validator_kwargs:
            await self._custom_validation(f)
        errors = f.errors + self._cycle_errors.pop(f.node_id, [])
        ok = f.valid and not errors
        self.validated[f.node_id] = (ok, [] if ok else errors, f.node_id)

    async def _custom_validation(self, f: _Frame) -> None:
        validator = f.spec.validate_inputs
        if validator is None:
            return
        missing = {e["extra_info"]["input_name"] for e in f.errors if e["type"] == "required_input_missing"}
        if missing & set(f.validator_args):
            # Its call would only fail on the parameter that is already reported missing (the
            # reference lets that TypeError replace every reason with a traceback).
            return
        # At validation time nothing has run: linked inputs are None, like the reference.
        data: dict[str, list[Any]] = {}
        for name, value in f.inputs.items():
            info = f.spec.input_info(name, f.types)
            if isinstance(value, list):
                raw = info is not None and info.options.get("rawLink", False)
                data[name] = [value] if raw else [None]
            elif info is not None and (info.category != "hidden" or not f.spec.is_v3):
                # A V1 hidden literal is an ordinary input here too; special tokens are set below.
                data[name] = [value]
            elif f.spec.accept_all_inputs:
                data[name] = [value]
        for name, token in f.spec.hidden_inputs().items():
            data[name] = [self._hidden_value(token, f.node_id)]
        wanted = {k: v for k, v in data.items() if k in f.validator_args or f.validator_kwargs}
        if "input_types" in f.validator_args:
            wanted["input_types"] = [f.received_types]
        results = await call_mapped(validator, dict(wanted), f.spec.input_is_list)
        for name in wanted:
            for result in results:
                if result is True or isinstance(result, ExecutionBlocker):
                    continue
                details = name if result is False else f"{name} - {result}"
                f.errors.append(
                    make_error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        details,
                        {"input_name": name},
                    )
                )

    def _hidden_value(self, token: str, node_id: str) -> Any:
        if token == "UNIQUE_ID":
            return node_id
        if token == "PROMPT":
            return self.prompt
        return None

    def reached_from(self, root: str) -> set[str]:
        seen = {root}
        todo = [root]
        while todo:
            for source in self.edges.get(todo.pop(), ()):
                if source not in seen:
                    seen.add(source)
                    todo.append(source)
        return seen


# --- the prompt ----------------------------------------------------------------------------------


def _is_output(spec: NodeSpec | None) -> bool:
    try:
        return spec is not None and spec.is_output_node
    except Exception:  # a V3 class whose define_schema() fails cannot be an output
        log.exception("node %s cannot describe itself", spec.name if spec else None)
        return False


def _check_classes(kernel: Kernel, prompt: dict[str, Any]) -> Error | None:
    specs = node_specs(kernel)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            title = _node_title(node, None) if isinstance(node, dict) else None
            return make_error(
                "missing_node_type",
                f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a custom node is missing.",
                f"Node ID '#{node_id}'",
                {"node_id": node_id, "class_type": None, "node_title": title},
            )
        class_type = node["class_type"]
        if specs.get(class_type) is None:
            title = _node_title(node, class_type)
            return make_error(
                "missing_node_type",
                f"Node '{title}' not found. The custom node may not be installed.",
                f"Node ID '#{node_id}'",
                {"node_id": node_id, "class_type": class_type, "node_title": title},
            )
    return None


async def validate_prompt(
    kernel: Kernel, prompt_id: str, prompt: Any, partial_execution_targets: Iterable[str] | None
) -> ValidationResult:
    """Validate an API-format prompt (execution-semantics §2); coerced literals are written back."""
    if not isinstance(prompt, dict):
        error = make_error(
            "invalid_prompt", "Cannot execute because the prompt is not an object of nodes", "", {}
        )
        return ValidationResult(False, error, [], {})
    error = _check_classes(kernel, prompt)
    if error is not None:
        return ValidationResult(False, error, [], {})

    targets = None if partial_execution_targets is None else set(partial_execution_targets)
    specs = node_specs(kernel)
    outputs = [
        node_id
        for node_id, node in prompt.items()
        if (targets is None or node_id in targets) and _is_output(specs.get(node["class_type"]))
    ]
    if not outputs:
        return ValidationResult(False, make_error("prompt_no_outputs", "Prompt has no outputs"), [], {})

    key = _structure_key(prompt, outputs)
    if key is not None:
        known = kernel.stash.setdefault(_STRUCTURES, {}).get(key)
        if known is not None and _literals_ok(kernel, prompt_id, prompt, known):
            return ValidationResult(True, None, list(outputs), {})

    walker = _Walker(kernel, prompt_id, prompt)
    good: list[str] = []
    failed: list[tuple[str, list[Error]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        ok, reasons = await walker.validate(output)
        if ok:
            good.append(output)
            continue
        failed.append((output, reasons))
        reached = walker.reached_from(output)
        for node_id, (node_ok, node_reasons, _) in walker.validated.items():
            # Nodes invalid only because an ancestor failed carry no errors and are not listed.
            if node_ok or not node_reasons or node_id not in reached:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output)

    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
        error = make_error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}
        )
        return ValidationResult(False, error, [], node_errors)
    if key is not None and not failed:
        _remember_structure(kernel, key, walker)
    return ValidationResult(True, None, good, node_errors)


# --- repeated structures ------------------------------------------------------------------------
#
# Clients send the same graph over and over with other widget values (a new seed, a new text).
# Once a graph's links and input names validated cleanly, a prompt of the same structure needs
# only its literal inputs checked (converted, ranges, choices) against declarations equal to
# the ones the full walk saw. Classes with a custom validator or a dynamic combo always take
# the full walk, and so does any prompt whose literals fail: errors come from the walk alone.


@dataclass(frozen=True, slots=True)
class _Structure:
    # The nodes the full walk reached (all valid) that have literal inputs to check again.
    with_literals: tuple[str, ...]
    # class -> (its spec, its declaration as the walk saw it, its RETURN_TYPES object)
    classes: dict[str, tuple[NodeSpec, dict[str, Any], Any]]


_STRUCTURES = StashKey[dict[tuple[Any, ...], _Structure]]()
_STRUCTURES_MAX = 256


def _structure_key(prompt: dict[str, Any], outputs: list[str]) -> tuple[Any, ...] | None:
    """The outputs, and per node its id, class, and input names with the links; None when the
    prompt has parts a key cannot hold (the full walk handles those)."""
    parts: list[Any] = [tuple(outputs)]
    for node_id, node in prompt.items():
        inputs = node.get("inputs")
        if type(inputs) is not dict:
            return None
        entries: list[Any] = []
        for name, value in inputs.items():
            if isinstance(value, list):
                if len(value) != 2:
                    return None
                entries.append((name, value[0], value[1]))
            else:
                entries.append(name)
        parts.append((node_id, node["class_type"], tuple(entries)))
    key = tuple(parts)
    try:
        hash(key)
    except TypeError:  # a link made of unhashable parts: client data
        return None
    return key


def _remember_structure(kernel: Kernel, key: tuple[Any, ...], walker: _Walker) -> None:
    classes: dict[str, tuple[NodeSpec, dict[str, Any], Any]] = {}
    for class_type, (types, _, _) in walker._declared.items():
        spec = walker.specs.get(class_type)
        if spec is None or class_type in walker._dynamic:
            return
        args, kwargs = spec.validate_signature
        if args or kwargs:
            return
        classes[class_type] = (spec, types, getattr(spec.cls, "RETURN_TYPES", None))
    cache = kernel.stash.setdefault(_STRUCTURES, {})
    if len(cache) >= _STRUCTURES_MAX:
        cache.clear()
    # From the key, taken before the walk converted literals ({"__value__": [...]} -> a list).
    literal = {node_id: any(isinstance(e, str) for e in entries) for node_id, _, entries in key[1:]}
    with_literals = tuple(node_id for node_id in walker.validated if literal[node_id])
    cache[key] = _Structure(with_literals, classes)


def _literals_ok(kernel: Kernel, prompt_id: str, prompt: dict[str, Any], known: _Structure) -> bool:
    """Check (and convert, as the walk does) the literal inputs of a known structure's nodes;
    False when anything differs from what the full walk saw or a literal fails."""
    walker = _Walker(kernel, prompt_id, prompt)
    declared: dict[str, tuple[NodeSpec, dict[str, Any], list[str], list[Any]]] = {}
    for class_type, (spec, types, returns) in known.classes.items():
        if walker.specs.get(class_type) is not spec or getattr(spec.cls, "RETURN_TYPES", None) is not returns:
            return False
        current = spec.execution_input_types()
        try:
            if current != types:
                return False
        except Exception:  # declarations holding values that do not compare
            return False
        names = _declared_names(current)
        declared[class_type] = (spec, current, names, _infos(spec, current, names))
    for node_id in known.with_literals:
        node = prompt[node_id]
        spec, types, names, infos = declared[node["class_type"]]
        inputs = node["inputs"]
        frame = _Frame(node_id, spec, inputs, types, names, infos, [], False)
        for name, info in zip(names, infos, strict=True):
            if name in inputs and not isinstance(inputs[name], list):
                input_type, _, options = info
                walker._check_literal(frame, name, inputs[name], input_type, options, [input_type, options])
        if frame.errors:
            return False
    return True
