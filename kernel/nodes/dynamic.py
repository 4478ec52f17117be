"""The reference's V3 autogrow inputs, as a prompt carries them and a node receives them.

``/object_info`` publishes an autogrow input as one entry,
``["COMFY_AUTOGROW_V3", {"template": {"input": {"required": {"image": ["IMAGE", {}]}},
"prefix": "image", "min": 1, "max": 50}}]`` (or ``"names": ["a", "b", ...]`` instead of a prefix):
a group of same-typed inputs the frontend adds one by one. A prompt carries the group's slots
under dotted names (``"images.image0"``, ``"values.a"``), and the node receives the group as one
dict of the slots the prompt gave, by slot name (``images={"image0": ..., "image1": ...}``).

:func:`expand_autogrow` declares the slots for validation and the executor (the first ``min``
required, the rest optional), :func:`autogrow_slots` lists them per group and :func:`folding`
wraps a node function so the dotted keyword arguments arrive folded into their group's dict.

A dynamic combo, ``["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "png", "inputs": {...}}, ...]}]``,
is a choice whose option brings its own inputs; a prompt carries the choice under the combo's
name and the chosen option's inputs under ``<combo>.<input>``. Which inputs exist depends on
the choice, so :func:`expand_dynamic_combos` declares them per prompt node, for validation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

AUTOGROW = "COMFY_AUTOGROW_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"

# Autogrow input name -> its slot names, in order.
AutogrowSlots = dict[str, tuple[str, ...]]


def _spec_parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(spec, list | tuple) or not spec:
        return None, {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], options


def _template_spec(template: Mapping[str, Any]) -> Any:
    """The one input spec an autogrow template repeats."""
    inputs = template.get("input") or {}
    for section in ("required", "optional"):
        for spec in (inputs.get(section) or {}).values():
            return spec
    return None


def _slot_names(template: Mapping[str, Any]) -> tuple[str, ...]:
    names = template.get("names")
    if names:
        return tuple(str(n) for n in names)
    prefix = str(template.get("prefix") or "")
    return tuple(f"{prefix}{i}" for i in range(int(template.get("max") or 0)))


def _groups(types: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(section, input name, template) of every autogrow input of ``types``."""
    found = []
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            kind, options = _spec_parts(spec)
            if kind == AUTOGROW:
                found.append((section, name, options.get("template") or {}))
    return found


def autogrow_slots(types: Mapping[str, Any]) -> AutogrowSlots:
    """Each autogrow input of ``types`` and its slot names (empty when there is none)."""
    return {name: _slot_names(template) for _, name, template in _groups(types)}


def expand_autogrow(types: dict[str, Any]) -> dict[str, Any]:
    """``types`` with each autogrow input replaced by its slots ``<input>.<slot>``, typed as the
    template's input; the first ``min`` slots are required, the others optional. ``types`` is
    returned as it is when it has no autogrow input."""
    groups = _groups(types)
    if not groups:
        return types
    expanded: dict[str, Any] = {key: value for key, value in types.items()}
    for section in ("required", "optional"):
        if section in types:
            expanded[section] = dict(types.get(section) or {})
    for section, name, template in groups:
        spec = _template_spec(template)
        entries = expanded.get(section) or {}
        rebuilt: dict[str, Any] = {}
        optional_slots: dict[str, Any] = {}
        minimum = int(template.get("min") or 0)
        for key, value in entries.items():
            if key != name:
                rebuilt[key] = value
                continue
            if spec is None:
                continue
            for index, slot in enumerate(_slot_names(template)):
                target = rebuilt if index < minimum and section == "required" else optional_slots
                target[f"{name}.{slot}"] = spec
        expanded[section] = rebuilt
        if optional_slots:
            expanded["optional"] = {**(expanded.get("optional") or {}), **optional_slots}
    return expanded


def folding(fn: Callable[..., Any], slots: AutogrowSlots) -> Callable[..., Any]:
    """``fn`` taking each autogrow group as one dict: the dotted slot arguments the call gets
    (``images.image0=...``) are passed as ``images={"image0": ...}``, slots in template order."""
    if not slots:
        return fn

    def fold(kwargs: dict[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        for name, names in slots.items():
            group: dict[str, Any] = {}
            for slot in names:
                key = f"{name}.{slot}"
                if key in out:
                    group[slot] = out.pop(key)
            out[name] = group
        return out

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def folded_async(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **fold(kwargs))

        return folded_async

    @functools.wraps(fn)
    def folded(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **fold(kwargs))

    return folded


def dynamic_combo_keys(options: Mapping[str, Any]) -> list[Any]:
    """The choices of a dynamic combo declared with ``options`` (its options' keys)."""
    return [o.get("key") for o in options.get("options") or () if isinstance(o, Mapping)]


def has_dynamic_combo(types: Mapping[str, Any]) -> bool:
    """Does the declaration ``types`` have a dynamic combo among its own inputs?"""
    return any(
        _spec_parts(spec)[0] == DYNAMIC_COMBO
        for section in ("required", "optional")
        for spec in (types.get(section) or {}).values()
    )


def expand_dynamic_combos(types: dict[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``types`` plus the inputs of the option each dynamic combo chose in ``inputs`` (a prompt
    node's inputs), declared as ``<combo>.<input>`` in the section the option puts them in, like
    the reference. A combo without a choice, or with one it does not offer, brings no inputs
    (the choice itself is what is wrong then); an option's own dynamic combos unfold in turn."""
    if not has_dynamic_combo(types):
        return types
    expanded: dict[str, Any] = {**types, "required": dict(types.get("required") or {})}
    expanded["optional"] = dict(types.get("optional") or {})

    def unfold(groups: Mapping[str, Any], prefix: str) -> None:
        for section in ("required", "optional"):
            for name, spec in (groups.get(section) or {}).items():
                full = f"{prefix}{name}"
                if prefix:
                    expanded[section][full] = spec
                kind, options = _spec_parts(spec)
                if kind != DYNAMIC_COMBO:
                    continue
                choice = inputs.get(full)
                if isinstance(choice, Mapping) and "__value__" in choice:
                    choice = choice["__value__"]
                for option in options.get("options") or ():
                    if isinstance(option, Mapping) and option.get("key") == choice:
                        unfold(option.get("inputs") or {}, f"{full}.")

    unfold(types, "")
    return expanded


__all__ = [
    "AUTOGROW",
    "DYNAMIC_COMBO",
    "AutogrowSlots",
    "autogrow_slots",
    "dynamic_combo_keys",
    "expand_autogrow",
    "expand_dynamic_combos",
    "folding",
    "has_dynamic_combo",
]
