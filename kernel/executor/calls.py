"""Calling a node: gathering its inputs, mapping it over lists, merging what the calls return.

Every value on a link is a list with one item per call of the producing node; literals are
one-item lists. A node is called once per index of its longest input list, shorter lists
repeating their last item (or once with whole lists when ``INPUT_IS_LIST``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kernel.nodes import ExecutionBlocker, InputInfo, NodeSpec, is_link
from kernel.nodes.spec import hidden_token

if TYPE_CHECKING:
    from kernel.executor.cache import CacheEntry
    from kernel.executor.graph import DynamicPrompt


@dataclass
class ClassInfo:
    """What the engine needs of one node class, read once per prompt (``INPUT_TYPES`` may be slow)."""

    spec: NodeSpec
    types: dict[str, Any]

    @cached_property
    def declared(self) -> dict[str, InputInfo]:
        found: dict[str, InputInfo] = {}
        for name in list(self.types.get("required") or {}) + list(self.types.get("optional") or {}):
            info = self.spec.input_info(name, self.types)
            if info is not None:
                found[name] = info
        return found

    @cached_property
    def lazy(self) -> frozenset[str]:
        return frozenset(n for n, i in self.declared.items() if i.options.get("lazy") is True)

    @cached_property
    def raw_link(self) -> frozenset[str]:
        return frozenset(n for n, i in self.declared.items() if i.options.get("rawLink") is True)

    @cached_property
    def hidden(self) -> dict[str, str]:
        """Hidden parameter name → the special token the engine fills in."""
        hidden = self.types.get("hidden") or {}
        tokens = {name: hidden_token(declared) for name, declared in hidden.items()}
        return {name: token for name, token in tokens.items() if token is not None}

    @cached_property
    def hidden_literal(self) -> frozenset[str]:
        """Hidden names whose prompt value (literal or link) reaches the function, as in the reference.

        A V1 hidden entry that is not a special token (``"remaining": ("INT",)``) is an ordinary
        input the frontend does not show; self-cloning loop nodes pass their counter this way.
        Special tokens are filled in afterwards and so win over any value the prompt gave.
        V3 hidden entries are always special tokens.
        """
        return frozenset() if self.spec.is_v3 else frozenset(self.types.get("hidden") or ())

    @cached_property
    def identity_bound(self) -> bool:
        return self.spec.not_idempotent or "UNIQUE_ID" in self.hidden.values()

    @cached_property
    def traits(self) -> tuple[frozenset[str], bool, bool]:
        return self.lazy, self.spec.is_output_node, self.spec.is_async


_HIDDEN_EXTRA_KEYS = {
    "AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org",
    "API_KEY_COMFY_ORG": "api_key_comfy_org",
    "COMFY_USAGE_SOURCE": "comfy_usage_source",
}


def gather_inputs(
    node_id: str,
    inputs: Mapping[str, Any],
    info: ClassInfo,
    lookup: Callable[[str], CacheEntry | None] | None,
    dynprompt: DynamicPrompt | None,
    extra_data: Mapping[str, Any],
) -> tuple[dict[str, list[Any]], set[str]]:
    """(input name -> list of values, names whose linked value is not available yet).

    With ``lookup=None`` (``IS_CHANGED`` time) every link counts as missing and gives ``None``.
    """
    data: dict[str, list[Any]] = {}
    missing: set[str] = set()
    for name, value in inputs.items():
        declared = info.declared.get(name)
        if is_link(value) and name not in info.raw_link:
            entry = lookup(value[0]) if lookup is not None else None
            index = int(value[1])
            if entry is None or entry.outputs is None or index >= len(entry.outputs):
                missing.add(name)
                data[name] = [None]
            else:
                data[name] = entry.outputs[index]
        elif declared is not None or name in info.hidden_literal or info.spec.accept_all_inputs:
            data[name] = [value]
        # Undeclared literals are dropped (undeclared links above are kept, for **kwargs nodes),
        # except for a node that accepts all inputs (its widgets exist only in the frontend).
    for name, token in info.hidden.items():
        if token == "PROMPT":
            data[name] = [dynprompt.get_original_prompt() if dynprompt is not None else {}]
        elif token == "DYNPROMPT":
            data[name] = [dynprompt]
        elif token == "EXTRA_PNGINFO":
            data[name] = [extra_data.get("extra_pnginfo")]
        elif token == "UNIQUE_ID":
            data[name] = [node_id]
        elif token in _HIDDEN_EXTRA_KEYS:
            data[name] = [extra_data.get(_HIDDEN_EXTRA_KEYS[token])]
    return data, missing


def call_plan(data: Mapping[str, list[Any]], input_is_list: bool) -> list[tuple[int, dict[str, Any]]]:
    """The (call index, keyword arguments) of each call, with short lists padded by their last item."""
    if input_is_list:
        return [(0, dict(data))]
    longest = max((len(v) for v in data.values()), default=0)
    if longest == 0:
        return [(0, {})]
    return [(i, {k: (v[i] if len(v) > i else v[-1]) for k, v in data.items() if v}) for i in range(longest)]


def blocker_in(kwargs: Mapping[str, Any], input_is_list: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        if input_is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
        if isinstance(value, ExecutionBlocker):
            return value
    return None


def merge_outputs(results: list[tuple[Any, ...]], output_is_list: tuple[bool, ...]) -> list[list[Any]]:
    """Per output slot: the per-call values, or their concatenation for ``OUTPUT_IS_LIST`` slots."""
    if not results:
        return []
    merged: list[list[Any]] = []
    for i in range(len(results[0])):
        if i < len(output_is_list) and output_is_list[i]:
            values: list[Any] = []
            for result in results:
                item = result[i]
                if isinstance(item, ExecutionBlocker):
                    values.append(item)
                else:
                    values.extend(item)
            merged.append(values)
        else:
            merged.append([result[i] for result in results])
    return merged


def merge_ui(uis: list[dict[str, Any]]) -> dict[str, Any]:
    """UI dicts of several calls: keys of the first, values concatenated."""
    if not uis:
        return {}
    if len(uis) == 1:
        return dict(uis[0])
    return {key: [item for ui in uis for item in (ui.get(key) or [])] for key in uis[0]}


def format_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


def full_type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
