"""Node replacements: ``register_node_replacements``, ``GET /node_replacements`` and their
application to ``POST /prompt`` bodies before validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel import StartupError, StashKey
from kernel.registry import NodeRegistry


@dataclass(frozen=True)
class Replacement:
    old_node_id: str
    new_node_id: str
    input_mapping: list[dict[str, Any]] | None
    output_mapping: list[dict[str, Any]] | None
    plugin: str

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"old_node_id": self.old_node_id, "new_node_id": self.new_node_id}
        if self.input_mapping is not None:
            out["input_mapping"] = self.input_mapping
        if self.output_mapping is not None:
            out["output_mapping"] = self.output_mapping
        return out


def _check_mapping(
    plugin: str, what: str, mapping: Any, valid: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]] | None:
    if mapping is None:
        return None
    if not isinstance(mapping, list) or not all(isinstance(m, dict) and valid(m) for m in mapping):
        raise StartupError(
            f"plugin {plugin} registered a node replacement with an invalid {what}: {mapping!r}"
        )
    return [dict(m) for m in mapping]


def _valid_input(m: dict[str, Any]) -> bool:
    return isinstance(m.get("new_id"), str) and (isinstance(m.get("old_id"), str) or "set_value" in m)


def _valid_output(m: dict[str, Any]) -> bool:
    return all(isinstance(m.get(k), int) and not isinstance(m.get(k), bool) for k in ("old_idx", "new_idx"))


@dataclass
class NodeReplacementRegistry:
    by_old: dict[str, list[Replacement]] = field(default_factory=dict)

    def register_for(self, plugin: str) -> Callable[..., None]:
        def register(
            old_node_id: str,
            new_node_id: str,
            input_mapping: list[dict[str, Any]] | None = None,
            output_mapping: list[dict[str, Any]] | None = None,
        ) -> None:
            for value in (old_node_id, new_node_id):
                if not isinstance(value, str) or not value:
                    raise StartupError(
                        f"plugin {plugin} registered a node replacement with invalid id {value!r}"
                    )
            existing = self.by_old.setdefault(old_node_id, [])
            if any(r.new_node_id == new_node_id for r in existing):
                return  # idempotent per (old, new) pair
            existing.append(
                Replacement(
                    old_node_id,
                    new_node_id,
                    _check_mapping(plugin, "input_mapping", input_mapping, _valid_input),
                    _check_mapping(plugin, "output_mapping", output_mapping, _valid_output),
                    plugin,
                )
            )

        return register

    def as_json(self) -> dict[str, list[dict[str, Any]]]:
        return {old: [r.as_dict() for r in found] for old, found in self.by_old.items()}

    def apply(self, prompt: dict[str, Any], nodes: NodeRegistry) -> list[str]:
        """Rewrite unknown-class nodes of an API-format prompt in place; return the node ids changed."""
        if not self.by_old:  # nothing registered (the usual case): POST /prompt skips the walk
            return []
        changed: list[str] = []
        remapped_outputs: dict[str, dict[int, int]] = {}
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                continue  # UI-format leftovers and junk are validation's business
            class_type = node["class_type"]
            if class_type in nodes:
                continue
            usable = next((r for r in self.by_old.get(class_type, ()) if r.new_node_id in nodes), None)
            if usable is None:
                continue
            old_inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            new_inputs: dict[str, Any] = {}
            for m in usable.input_mapping or ():
                if "old_id" in m and m["old_id"] in old_inputs:
                    new_inputs[m["new_id"]] = old_inputs[m["old_id"]]
                elif "set_value" in m:
                    new_inputs[m["new_id"]] = m["set_value"]
            node["class_type"] = usable.new_node_id
            node["inputs"] = new_inputs
            if usable.output_mapping:
                remapped_outputs[str(node_id)] = {m["old_idx"]: m["new_idx"] for m in usable.output_mapping}
            changed.append(str(node_id))
        if remapped_outputs:
            _repoint_links(prompt, remapped_outputs)
        return changed


def _repoint_links(prompt: dict[str, Any], remapped: dict[str, dict[int, int]]) -> None:
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and str(value[0]) in remapped
                and isinstance(value[1], int)
                and value[1] in remapped[str(value[0])]
            ):
                inputs[name] = [value[0], remapped[str(value[0])][value[1]]]


REPLACEMENTS = StashKey[NodeReplacementRegistry]()
